"""``authfilter report send|generate|show``: DMARC aggregate reports (RFC 9990).

Times are UTC.  A period is chosen with ``--date YYYY-MM-DD`` or ``--since``/``--until``
(``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM[:SS]`` or seconds since the epoch).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .common import add_config_argument, load_config_or_exit

DAY = 86400


def register(sub) -> None:
    p = sub.add_parser("report", help="DMARC aggregate reports: send, generate, show",
                       description="DMARC aggregate reports (RFC 9990) from the report store.")
    cmds = p.add_subparsers(dest="report_command", metavar="ACTION", required=True)

    send = cmds.add_parser("send", help="mail every finished period's reports to their rua "
                                        "addresses (run daily by authfilter-report.timer)")
    add_config_argument(send)
    send.add_argument("--dns", metavar="HOST[:PORT]", action="append",
                      help="nameserver for the external-destination checks (repeatable)")
    send.add_argument("--domain", help="only this policy domain")
    send.add_argument("--dry-run", action="store_true",
                      help="write the reports and messages to --out instead of sending; "
                           "nothing is marked sent")
    send.add_argument("--out", metavar="DIR", default=".",
                      help="where --dry-run writes (default .)")
    send.add_argument("--now", metavar="TIME", help="act as if it were TIME (replaying a backlog)")
    send.set_defaults(func=run_send)

    gen = cmds.add_parser("generate", help="write the reports of a period as files")
    add_config_argument(gen)
    gen.add_argument("--out", metavar="DIR", required=True, help="directory for the report files")
    gen.add_argument("--domain", help="only this policy domain")
    gen.add_argument("--plain", action="store_true", help="write .xml instead of .xml.gz")
    _add_period_arguments(gen, "default: the last finished period")
    gen.set_defaults(func=run_generate)

    show = cmds.add_parser("show", help="summary per domain: messages, pass/fail, top failing "
                                        "sources")
    add_config_argument(show)
    show.add_argument("--domain", help="only this policy domain")
    show.add_argument("--top", type=int, default=5, metavar="N", help="failing sources shown (5)")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    _add_period_arguments(show, "default: the last 24 hours")
    show.set_defaults(func=run_show)


def _add_period_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--date", metavar="YYYY-MM-DD", help=f"one UTC day ({default})")
    parser.add_argument("--since", metavar="TIME", help="start (inclusive)")
    parser.add_argument("--until", metavar="TIME", help="end (exclusive)")


def parse_time(text: str) -> int:
    """``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM[:SS][Z]`` (UTC) or epoch seconds -> epoch seconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.removesuffix("Z").replace(" ", "T"))
    except ValueError:
        raise ValueError(f"{text!r} is not YYYY-MM-DD, YYYY-MM-DDTHH:MM or epoch seconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def _range(args: argparse.Namespace, default: tuple[int, int]) -> tuple[int, int]:
    if args.date:
        since = parse_time(args.date)
        return since, since + DAY
    since = parse_time(args.since) if args.since else default[0]
    until = parse_time(args.until) if args.until else default[1]
    if until <= since:
        raise ValueError("--until must be after --since")
    return since, until


def _utc(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"authfilter report: {message}\n")
    return code


def _open(config):
    from ..reports.backends import open_store
    return open_store(config.reports.store)


# -- send ---------------------------------------------------------------------------------------
def run_send(args: argparse.Namespace) -> int:
    from ..dns import parse_nameserver
    from ..engine import resolver_from_config
    from ..reports.sender import DeliveryError, Relay, RelaySettings, ReportSender
    from ..reports.store import StoreError

    config = load_config_or_exit(args.config)
    try:
        for server in args.dns or ():
            parse_nameserver(server)
        now = parse_time(args.now) if args.now else int(time.time())
    except ValueError as exc:
        return _fail(str(exc))
    if args.dns:
        config.dns.nameservers = list(args.dns)
    out = Path(args.out) if args.dry_run else None
    if out is not None and not out.is_dir():
        return _fail(f"--out: {out} is not a directory")
    try:
        relay = None if out is not None else Relay(RelaySettings.from_config(config.reports))
    except DeliveryError as exc:
        return _fail(str(exc))

    async def send():
        sender = ReportSender(config, store, resolver_from_config(config),
                              relay.send if relay else None, now=now, dry_run_dir=out)
        return await sender.run(args.domain)

    try:
        store = _open(config)
    except StoreError as exc:
        return _fail(str(exc), 1)
    try:
        summary = asyncio.run(send())
        if out is None:
            store.prune(now - config.reports.retention_days * DAY)
    except StoreError as exc:
        return _fail(str(exc), 1)
    finally:
        if relay is not None:
            relay.close()
        store.close()
    for domain, begin, address in summary.sent:
        print(f"sent     {domain} {_utc(begin)} to {address}")
    for path in summary.written:
        print(f"wrote    {path}")
    for domain, begin, why in summary.skipped:
        print(f"skipped  {domain} {_utc(begin)}: {why}")
    for domain, begin, why in summary.retry:
        print(f"retry    {domain} {_utc(begin)}: {why}")
    for domain, begin, why in summary.failed:
        print(f"failed   {domain} {_utc(begin)}: {why}")
    return 1 if summary.failed else 0


# -- generate -----------------------------------------------------------------------------------
def run_generate(args: argparse.Namespace) -> int:
    from ..reports.aggregate import build_reports, period_start
    from ..reports.sender import reporter_from_config
    from ..reports.store import StoreError

    config = load_config_or_exit(args.config)
    period = config.reports.period
    latest = period_start(int(time.time()), period)
    try:
        since, until = _range(args, (latest - period, latest))
    except ValueError as exc:
        return _fail(str(exc))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(f"--out: {exc}")
    reporter = reporter_from_config(config)
    rfc7489 = config.reports.rfc7489_xml
    written = 0
    try:
        store = _open(config)
        try:
            for begin in range(period_start(since, period), until, period):
                for report in build_reports(store, reporter, begin, period, args.domain):
                    path = out / report.filename(reporter, compressed=not args.plain)
                    data = (report.xml(reporter, rfc7489=rfc7489) if args.plain
                            else report.gzipped(reporter, rfc7489=rfc7489))
                    path.write_bytes(data)
                    written += 1
                    print(f"{path}  ({report.message_count} messages, "
                          f"{len(report.records)} records)")
        finally:
            store.close()
    except StoreError as exc:
        return _fail(str(exc), 1)
    except OSError as exc:
        return _fail(f"cannot write: {exc}", 1)
    if not written:
        print(f"no rows between {_utc(since)} and {_utc(until)} UTC")
    return 0


# -- show ---------------------------------------------------------------------------------------
def summarize(rows, top: int) -> list[dict]:
    """Per domain: messages, DMARC pass/fail, dispositions, and the sources of most failures,
    from :meth:`Store.source_counts` rows."""
    domains: dict[str, dict] = {}
    for domain, ip, passed, disposition, count in rows:
        d = domains.setdefault(domain, {"domain": domain, "messages": 0, "pass": 0, "fail": 0,
                                        "dispositions": {}, "_failing": {}})
        d["messages"] += count
        d["pass" if passed else "fail"] += count
        d["dispositions"][disposition] = d["dispositions"].get(disposition, 0) + count
        if not passed:
            d["_failing"][ip] = d["_failing"].get(ip, 0) + count
    out = []
    for d in sorted(domains.values(), key=lambda d: (-d["messages"], d["domain"])):
        failing = sorted(d.pop("_failing").items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        d["top_failing_sources"] = [{"ip": ip, "messages": n} for ip, n in failing]
        out.append(d)
    return out


def run_show(args: argparse.Namespace) -> int:
    from ..reports.backends import shown
    from ..reports.store import StoreError

    config = load_config_or_exit(args.config)
    now = int(time.time())
    try:
        since, until = _range(args, (now - DAY, now + 1))
    except ValueError as exc:
        return _fail(str(exc))
    if args.top < 0:
        return _fail("--top must be 0 or more")
    try:
        store = _open(config)
        try:
            domains = summarize(store.source_counts(since, until, args.domain), args.top)
            states = {(d, b): (s, delivered, note) for d, b, s, _, delivered, note in
                      store.report_states(since - config.reports.period)}
        finally:
            store.close()
    except StoreError as exc:
        return _fail(str(exc), 1)
    for d in domains:
        d["reports"] = [{"period_begin": b, "state": s, "note": note,
                         "delivered": [a for a in sent.split("\n") if a]}
                        for (name, b), (s, sent, note) in sorted(states.items())
                        if name == d["domain"] and since - config.reports.period < b < until]
    if args.json:
        json.dump({"store": shown(config.reports.store), "since": since, "until": until,
                   "domains": domains}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(f"store {shown(config.reports.store)} ({args.config or 'embedded defaults'})")
    print(f"DMARC evaluations {_utc(since)} to {_utc(until)} UTC: {len(domains)} policy domains")
    for d in domains:
        dispositions = ", ".join(f"{k} {v}" for k, v in sorted(d["dispositions"].items()))
        print(f"\n{d['domain']}: {d['messages']} messages, {d['pass']} pass, {d['fail']} fail "
              f"(disposition: {dispositions})")
        if d["top_failing_sources"]:
            print("  top failing sources: " + ", ".join(
                f"{s['ip']} ({s['messages']})" for s in d["top_failing_sources"]))
        for r in d["reports"]:
            where = f" to {', '.join(r['delivered'])}" if r["delivered"] else ""
            note = f" ({r['note']})" if r["note"] else ""
            print(f"  report {_utc(r['period_begin'])}: {r['state']}{where}{note}")
    return 0
