"""``authfilter keygen``: a new DKIM key pair; the private key to a 0600 file, the DNS record to stdout."""
from __future__ import annotations

import argparse
import os
import pwd
import sys

ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}
EXIT_USAGE = 2


def register(sub) -> None:
    p = sub.add_parser("keygen", help="generate a DKIM signing key and print its DNS record",
                       description="Write a new private key to DIR/DOMAIN.SELECTOR.key (mode "
                                   "0600, never overwriting) and print the TXT record to publish, "
                                   "in zone-file syntax.  The [[signing.keys]] lines for the "
                                   "config go to stderr.")
    p.add_argument("--domain", required=True, help="signing domain (d=)")
    p.add_argument("--selector", required=True, help="selector (s=)")
    p.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="rsa",
                   help="rsa (rsa-sha256, default) or ed25519 (ed25519-sha256, RFC 8463)")
    p.add_argument("--bits", type=int, default=2048, help="RSA key size (1024-4096; default 2048)")
    p.add_argument("--out", default=".", metavar="DIR", help="directory for the key file (default .)")
    p.add_argument("--owner", metavar="USER",
                   help="give the key file to this user and its group (the service's: "
                        "authfilter); needs root")
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    sys.stderr.write(f"authfilter keygen: error: {message}\n")
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    from ..addresses import AddressError, normalize_domain
    from ..config import check_selector
    from ..signing.keys import generate_key, write_new_key, zone_file_record

    try:
        domain = normalize_domain(args.domain)
    except AddressError as exc:
        return _fail(f"--domain: {exc}")
    try:
        check_selector(args.selector)
    except ValueError as exc:
        return _fail(f"--selector: {exc}")
    if not args.selector:
        return _fail("--selector: empty")
    algorithm = ALGORITHMS[args.algorithm]
    try:
        key = generate_key(algorithm, args.bits)
    except ValueError as exc:
        return _fail(f"--bits: {exc}")
    owner = None
    if args.owner:
        try:
            entry = pwd.getpwnam(args.owner)
        except KeyError:
            return _fail(f"--owner: no user {args.owner!r}")
        owner = (entry.pw_uid, entry.pw_gid)
    path = os.path.abspath(os.path.join(args.out, f"{domain}.{args.selector}.key"))
    try:
        write_new_key(path, key, owner)
    except FileExistsError:
        return _fail(f"{path} exists; choose another selector or move the old key away")
    except PermissionError as exc:
        return _fail(f"cannot write {path}: {exc.strerror or exc}"
                     + (" (--owner needs root)" if owner else ""))
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror or exc}")
    sys.stdout.write(zone_file_record(args.selector, domain, key.dns_record()))
    owned = f", owner {args.owner}" if args.owner else ""
    sys.stderr.write(f"wrote {path} (mode 0600{owned}). Publish the record above, then add to "
                     f"the config:\n"
                     f"\n[[signing.keys]]\ndomain = \"{domain}\"\nselector = \"{args.selector}\"\n"
                     f"algorithm = \"{algorithm}\"\nkey_file = \"{path}\"\n"
                     f"from_domains = [\"{domain}\"]   # From domains signed with it; \"*.{domain}\" "
                     f"for subdomains\n"
                     f"active = true\n")
    return 0
