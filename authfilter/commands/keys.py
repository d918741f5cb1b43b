"""``authfilter keys check``: is every configured signing key published correctly in DNS?"""
from __future__ import annotations

import argparse
import asyncio
import sys

from .common import add_config_argument, load_config_or_exit

EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def register(sub) -> None:
    p = sub.add_parser("keys", help="check signing keys against DNS")
    actions = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = actions.add_parser("check", help="compare every configured key with its DNS record",
                           description="Look up SELECTOR._domainkey.DOMAIN for every DKIM signing "
                                       "key and the ARC sealing key; report records that are "
                                       "missing, different from our key, or revoked while the "
                                       "key is active.  Exit 1 when there is a problem.")
    add_config_argument(c)
    c.add_argument("--dns", metavar="HOST[:PORT]", action="append",
                   help="nameserver to ask instead of the configured ones (repeatable)")
    c.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from ..dns import Resolver, parse_nameserver
    from ..signing import SigningConfigError
    from ..signing.arc_seal import ArcSealer
    from ..signing.published import PublishedKey, check_published
    from ..signing.table import SigningTable

    config = load_config_or_exit(args.config)
    try:
        for server in args.dns or ():
            parse_nameserver(server)
    except ValueError as exc:
        sys.stderr.write(f"authfilter keys check: --dns: {exc}\n")
        return EXIT_USAGE
    try:
        table = SigningTable.from_config(config.signing)
        sealer = ArcSealer.from_config(config) if config.signing.arc.domain else None
    except SigningConfigError as exc:
        sys.stderr.write(f"authfilter keys check: {exc}\n")
        return EXIT_USAGE
    targets = list({(t.role, t.name, t.key.path): t for t in
                    [PublishedKey("dkim", k.domain, k.selector, k.key, k.active) for k in table.keys]
                    + ([PublishedKey("arc", sealer.domain, sealer.selector, sealer.key)] if sealer else [])
                    }.values())
    if not targets:
        sys.stdout.write("no signing or sealing keys configured\n")
        return 0
    d = config.dns
    resolver = Resolver(args.dns or d.nameservers, timeout=d.timeout, lifetime=d.lifetime, cache_size=0)
    results = asyncio.run(check_published(targets, resolver))
    for r in results:
        t = r.target
        state = "active" if t.active else "inactive"
        word = r.status if r.problem else "ok"
        sys.stdout.write(f"{word.upper():<9} {t.role} d={t.domain} s={t.selector} "
                         f"a={t.key.algorithm} ({state}): {r.detail}\n")
    problems = sum(r.problem for r in results)
    sys.stdout.write(f"{len(results)} key(s) checked, {problems} problem(s)\n")
    return EXIT_PROBLEMS if problems else 0
