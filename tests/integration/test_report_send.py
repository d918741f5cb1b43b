"""``authfilter report send`` end to end: real evaluations in the store, the loopback DNS server
for external-destination checks, and a real SMTP server on loopback (STARTTLS + AUTH) that
keeps what it receives.  Each report must arrive once, in the RFC 9990 shape, and parse with
parsedmarc to the recorded counts; two concurrent runs must not send anything twice."""
from __future__ import annotations

import asyncio
import collections
import email
import email.policy
import json
import threading
from datetime import datetime, timezone

import parsedmarc

from authfilter import config as config_mod
from authfilter.cli import main
from authfilter.dns import Resolver
from authfilter.reports.aggregate import period_start
from authfilter.reports.backends import open_store
from authfilter.reports.rows import EvaluationRow
from authfilter.reports.sender import Relay, RelaySettings, ReportSender
from tests.integration.test_report_engine import DAY, WHEN, expected_counts, record_all
from tests.integration.test_report_fixtures import (  # noqa: F401  (fixtures)
    PASSWORD, USER, evaluate_mail, pg_url, smtp_sink, sqlite_url, store_url)

NOW = period_start(WHEN, DAY) + DAY + 3600          # 01:00 the day after: the period is over


def write_config(tmp_path, store: str, sink, **reports) -> str:
    (tmp_path / "relay.pw").write_text(PASSWORD + "\n")
    settings = {"store": store, "submitter": "receiver.example", "org_name": "Receiver Inc.",
                "from_address": "dmarc-reports@receiver.example", "relay_port": sink.port,
                "relay_starttls": "required", "relay_ca_file": sink.ca_file, "relay_user": USER,
                "relay_password_file": str(tmp_path / "relay.pw"), **reports}
    lines = ["[reports]"] + [f"{k} = {_toml(v)}" for k, v in settings.items()]
    path = tmp_path / "authfilter.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _toml(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else f'"{value}"'


def send(cfg: str, zone, *extra: str, now: int = NOW) -> int:
    return main(["report", "send", "-c", cfg, "--dns", zone.address, "--now", str(now), *extra])


def received(sink) -> dict[str, list]:
    """Recipient -> parsed messages."""
    out = collections.defaultdict(list)
    for mail_from, rcpts, content, tls, _ in sink.handler.messages:
        for rcpt in rcpts:
            out[rcpt].append((mail_from, email.message_from_bytes(content, policy=email.policy.default),
                              content, tls))
    return out


def test_send_mails_each_report_once_in_the_rfc_shape(zone, tmp_path, smtp_sink, sqlite_url, capsys):
    evaluated = evaluate_mail(zone)
    record_all(sqlite_url, evaluated)
    cfg = write_config(tmp_path, sqlite_url, smtp_sink)

    assert send(cfg, zone) == 0
    got = received(smtp_sink)
    assert sorted(got) == ["dmarc@example.com", "r@testing.example", "reports@collector.example"]
    assert all(len(v) == 1 for v in got.values())
    assert smtp_sink.logins and all(tls for v in got.values() for *_, tls in v)

    seen = collections.Counter()
    for rcpt, [(mail_from, msg, raw, _)] in got.items():
        assert mail_from == "dmarc-reports@receiver.example"
        domain = "testing.example" if rcpt == "r@testing.example" else "example.com"
        subject = " ".join(msg["Subject"].split())
        assert subject.startswith(f"Report Domain: {domain} Submitter: receiver.example Report-ID: <")
        (attachment,) = list(msg.iter_attachments())
        assert attachment.get_content_type() == "application/gzip"
        begin = period_start(WHEN, DAY)
        report_id = subject.rsplit("<", 1)[1].rstrip(">")
        assert attachment.get_filename() == \
            f"receiver.example!{domain}!{begin}!{begin + DAY - 1}!{report_id}.xml.gz"
        assert msg["Message-ID"] == f"<{report_id}@receiver.example>"
        parsed = parsedmarc.parse_report_email(raw, offline=True)
        assert parsed["report_type"] == "aggregate"
        report = parsed["report"]
        assert report["report_metadata"]["report_id"] == report_id
        if rcpt == "reports@collector.example":
            continue            # the same report as dmarc@example.com's
        for rec in report["records"]:
            seen[(report["policy_published"]["domain"], rec["source"]["ip_address"],
                  rec["alignment"]["dmarc"], rec["policy_evaluated"]["disposition"])] += rec["count"]
    assert seen == expected_counts(evaluated)
    assert "sent     example.com" in capsys.readouterr().out

    # A second run, even much later, sends nothing again.
    assert send(cfg, zone, now=NOW + DAY) == 0
    assert len(smtp_sink.handler.messages) == 3


def test_external_destination_needs_its_authorization_record(zone, tmp_path, smtp_sink,
                                                             sqlite_url, capsys):
    evaluated = evaluate_mail(zone)
    zone.reset()                 # the evaluations are done; now drop the authorization record
    record_all(sqlite_url, evaluated)
    cfg = write_config(tmp_path, sqlite_url, smtp_sink)
    assert send(cfg, zone) == 0
    assert sorted(received(smtp_sink)) == ["dmarc@example.com", "r@testing.example"]
    capsys.readouterr()
    day = datetime.fromtimestamp(WHEN, timezone.utc).strftime("%Y-%m-%d")
    assert main(["report", "show", "-c", cfg, "--date", day, "--json"]) == 0
    shown = {d["domain"]: d for d in json.loads(capsys.readouterr().out)["domains"]}
    (state,) = shown["example.com"]["reports"]
    assert state["state"] == "sent" and state["delivered"] == ["dmarc@example.com"]
    assert state["note"] == ("reports@collector.example: not authorized: no v=DMARC1 record at "
                             "example.com._report._dmarc.collector.example")


def test_dns_failure_on_the_authorization_check_is_retried(zone, tmp_path, smtp_sink, sqlite_url,
                                                           capsys):
    evaluated = evaluate_mail(zone)
    record_all(sqlite_url, evaluated)
    zone.misbehave("example.com._report._dmarc.collector.example", "servfail")
    cfg = write_config(tmp_path, sqlite_url, smtp_sink)
    assert send(cfg, zone) == 0
    assert sorted(received(smtp_sink)) == ["dmarc@example.com", "r@testing.example"]
    assert "retry    example.com" in capsys.readouterr().out
    zone.reset()
    zone.add("example.com._report._dmarc.collector.example", "TXT", "v=DMARC1")
    assert send(cfg, zone, now=NOW + 600) == 0          # not due yet: nothing
    assert len(smtp_sink.handler.messages) == 2
    assert send(cfg, zone, now=NOW + 3600) == 0
    got = received(smtp_sink)
    assert sorted(got) == ["dmarc@example.com", "r@testing.example", "reports@collector.example"]
    assert len(got["dmarc@example.com"]) == 1           # the delivered one is not sent again


def test_relay_refusal_retries_only_that_destination(zone, tmp_path, smtp_sink, sqlite_url, capsys):
    evaluated = evaluate_mail(zone)
    record_all(sqlite_url, evaluated)
    smtp_sink.handler.reject["dmarc@example.com"] = "450 4.2.0 try later"
    smtp_sink.handler.reject["r@testing.example"] = "550 5.1.1 no such user"
    cfg = write_config(tmp_path, sqlite_url, smtp_sink)
    assert send(cfg, zone) == 1                          # testing.example failed for good
    out = capsys.readouterr().out
    assert "retry    example.com" in out and "failed   testing.example" in out
    assert sorted(received(smtp_sink)) == ["reports@collector.example"]
    smtp_sink.handler.reject.clear()
    assert send(cfg, zone, now=NOW + 3600) == 0
    got = received(smtp_sink)
    assert sorted(got) == ["dmarc@example.com", "reports@collector.example"]
    assert len(got["reports@collector.example"]) == 1


def test_dry_run_writes_files_and_marks_nothing(zone, tmp_path, smtp_sink, sqlite_url):
    record_all(sqlite_url, evaluate_mail(zone))
    cfg = write_config(tmp_path, sqlite_url, smtp_sink)
    out = tmp_path / "out"
    out.mkdir()
    assert send(cfg, zone, "--dry-run", "--out", str(out)) == 0
    names = sorted(p.name for p in out.iterdir())
    assert len([n for n in names if n.endswith(".xml.gz")]) == 2
    assert len([n for n in names if n.endswith(".eml")]) == 3
    assert smtp_sink.handler.messages == []
    assert send(cfg, zone) == 0
    assert len(smtp_sink.handler.messages) == 3


def test_suppression_list_and_size_limits(zone, tmp_path, smtp_sink, sqlite_url, capsys):
    record_all(sqlite_url, evaluate_mail(zone))
    cfg = write_config(tmp_path, sqlite_url, smtp_sink,
                       suppress=["testing.example", "reports@collector.example"])
    assert send(cfg, zone) == 0
    assert sorted(received(smtp_sink)) == ["dmarc@example.com"]
    assert "skipped  testing.example" in capsys.readouterr().out


def _rows_for_many_domains(count: int) -> list[EvaluationRow]:
    rows = []
    for i in range(count):
        domain = f"d{i}.example"
        rows.append(EvaluationRow(WHEN + i, domain, domain, domain, domain, "", "192.0.2.1",
                                  domain, "mfrom", "pass", f"{domain}\ts\tpass", 1, 1, "none", "",
                                  f"p=none;rua=mailto:agg@{domain},mailto:second@{domain}",
                                  "treewalk"))
    return rows


def test_two_concurrent_runs_send_each_report_once(zone, tmp_path, smtp_sink, store_url):
    domains = 40
    store = open_store(store_url)
    store.insert_rows(_rows_for_many_domains(domains))
    store.close()
    cfg = config_mod.load(write_config(tmp_path, store_url, smtp_sink))
    start = threading.Barrier(2)
    errors = []

    def one_run():
        try:
            own_store = open_store(store_url)
            relay = Relay(RelaySettings.from_config(cfg.reports))
            try:
                async def go():
                    sender = ReportSender(cfg, own_store, Resolver([zone.address]), relay.send,
                                          now=NOW)
                    start.wait()
                    return await sender.run()
                asyncio.run(go())
            finally:
                relay.close()
                own_store.close()
        except Exception as exc:        # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    deliveries = collections.Counter(rcpt for _, rcpts, *_ in smtp_sink.handler.messages
                                     for rcpt in rcpts)
    assert len(deliveries) == 2 * domains
    assert set(deliveries.values()) == {1}


def test_two_cli_processes_at_once_send_each_report_once(zone, tmp_path, smtp_sink, store_url):
    """The same race between two real ``authfilter report send`` processes."""
    import subprocess
    import sys

    domains = 30
    store = open_store(store_url)
    store.insert_rows(_rows_for_many_domains(domains))
    store.close()
    cfg = write_config(tmp_path, store_url, smtp_sink)
    command = [sys.executable, "-m", "authfilter", "report", "send", "-c", cfg, "--dns",
               zone.address, "--now", str(NOW)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)]
    outputs = [r.communicate(timeout=60) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    deliveries = collections.Counter(rcpt for _, rcpts, *_ in smtp_sink.handler.messages
                                     for rcpt in rcpts)
    assert len(deliveries) == 2 * domains and set(deliveries.values()) == {1}
    sent_lines = sum(out.decode().count("sent     ") for out, _ in outputs)
    assert sent_lines == 2 * domains


def test_relay_refusing_our_password_is_a_retry_not_a_loss(zone, tmp_path, smtp_sink,
                                                           sqlite_url, capsys):
    record_all(sqlite_url, evaluate_mail(zone))
    cfg = write_config(tmp_path, sqlite_url, smtp_sink)
    (tmp_path / "relay.pw").write_text("wrong\n")
    assert send(cfg, zone) == 0
    assert smtp_sink.handler.messages == [] and smtp_sink.logins == []
    out = capsys.readouterr().out
    assert "retry    example.com" in out and "535" in out
    (tmp_path / "relay.pw").write_text(PASSWORD + "\n")
    assert send(cfg, zone, now=NOW + 3600) == 0
    assert len(smtp_sink.handler.messages) == 3


def test_auth_is_never_sent_without_tls(zone, tmp_path, smtp_sink, sqlite_url, capsys):
    record_all(sqlite_url, evaluate_mail(zone))
    cfg = write_config(tmp_path, sqlite_url, smtp_sink, relay_starttls="off")
    assert send(cfg, zone) == 0
    assert smtp_sink.handler.messages == []
    assert "no TLS, so no AUTH" in capsys.readouterr().out
