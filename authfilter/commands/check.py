"""``authfilter check``: what the filter would do with a saved message, from the shell.

The message goes through the same pipeline as in ``serve`` (trusted networks, allow-lists,
policy, signing for ``--role submission``); nothing is logged, counted or recorded."""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys

from ..results import ROLES
from .common import add_config_argument, load_config_or_exit, read_message


def register(sub) -> None:
    p = sub.add_parser("check", help="verify a saved message and print the verdict",
                       description="Run iprev, SPF, DKIM, ARC, DMARC and the DNS blocklists on a "
                                   "message as the filter would, and print our "
                                   "Authentication-Results header (rate limits are not "
                                   "checked).")
    add_config_argument(p)
    p.add_argument("--dns", metavar="HOST[:PORT]", action="append",
                   help="nameserver to use instead of the configured ones (repeatable)")
    p.add_argument("--ip", required=True, help="the connecting client's IP address")
    p.add_argument("--helo", help="the HELO/EHLO name the client gave")
    p.add_argument("--mail-from", dest="mail_from",
                   help="the MAIL FROM address ('' is the null sender)")
    p.add_argument("--rcpt", action="append", default=[], help="a recipient (repeatable)")
    p.add_argument("--role", choices=ROLES, default="inbound",
                   help="the listener's role: inbound (verify and act, the default), "
                        "submission or local (sign)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("file", nargs="?", default="-", help="message file, or - for stdin (default)")
    p.set_defaults(func=run)


def _usage_error(message: str) -> int:
    sys.stderr.write(f"authfilter check: error: {message}\n")
    return 2


def run(args: argparse.Namespace) -> int:
    from ..dns import parse_nameserver
    from ..pipeline import Pipeline
    from ..results import SessionFacts
    from ..runtime import Runtime

    config = load_config_or_exit(args.config)
    if args.dns:
        try:
            for server in args.dns:
                parse_nameserver(server)
        except ValueError as exc:
            return _usage_error(f"--dns: {exc}")
        config.dns.nameservers = list(args.dns)
    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        return _usage_error(f"--ip: {args.ip!r} is not an IP address")
    try:
        raw = read_message(args.file)
    except OSError as exc:
        return _usage_error(f"cannot read {args.file}: {exc.strerror or exc}")
    except ValueError as exc:
        return _usage_error(str(exc))

    facts = SessionFacts.create(args.ip, helo=args.helo, mail_from=args.mail_from,
                                recipients=args.rcpt, role=args.role)

    async def dispose():
        tx = Pipeline(Runtime.build(config)).begin(facts)
        try:
            return await tx.finish(raw)
        finally:
            tx.abandon()

    d = asyncio.run(dispose())
    added = "".join(f"{name}: {value}\n" for name, value in d.prepend).replace("\r\n", "\n")
    if args.json:
        out = d.verdict.to_dict() if d.verdict is not None else {}
        results = [v for n, v in d.prepend if n.lower() == "authentication-results"]
        out["authentication_results"] = _unfolded(results[0]) if results else None
        out["action"] = d.action
        out["reason"] = d.decision.reason
        out["reply"] = f"{d.reply.code} {d.reply.text}" if d.reply else None
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(added)
    if d.verdict is not None:
        sys.stdout.write("\n" + summary(d.verdict))
    sys.stdout.write(f"\nAction {d.action}: {d.decision.reason}"
                     + (f"\nReply  {d.reply.code} {d.reply.text}" if d.reply else "") + "\n")
    return 0


def _unfolded(value: str) -> str:
    """A folded field value on one line (RFC 5322 s. 2.2.3), as the log writes it."""
    return " ".join(part.strip() for part in value.split("\r\n"))


def summary(verdict) -> str:
    """A few readable lines: each check's own, then the problems with the message."""
    lines = [line for check, result in verdict.reported() for line in check.summary(result)]
    lines += [f"note   {e}" for e in verdict.errors]
    return "\n".join(lines) + "\n"
