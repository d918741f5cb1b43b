"""``authfilter doctor`` run as a real command against the loopback DNS server."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from authfilter.cli import main
from authfilter.signing.keys import ED25519_SHA256, generate_key, write_new_key

ROOT = Path(__file__).resolve().parents[2]


def doctor(zone, domain: str, *args: str, as_json: bool = True):
    """Run the command; with ``as_json`` return (exit code, parsed JSON), else (code, stdout)."""
    cmd = [sys.executable, "-m", "authfilter", "doctor", domain, "--dns", zone.address,
           "--timeout", "0.5", *args] + (["--json"] if as_json else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    if not as_json:
        return proc.returncode, proc.stdout
    return proc.returncode, json.loads(proc.stdout)


def levels(report: dict, area: str | None = None) -> list[str]:
    return [f["level"] for f in report["findings"] if area in (None, f["area"])]


def messages(report: dict, level: str, area: str) -> str:
    return "\n".join(f["message"] for f in report["findings"]
                     if f["level"] == level and f["area"] == area)


def publish_good_domain(zone, domain: str = "example.com") -> None:
    zone.add(domain, "TXT", "v=spf1 include:_spf.example.net mx -all")
    zone.add(domain, "TXT", "google-site-verification=abc")          # other TXT data is fine
    zone.add(domain, "MX", "10 mx.example.com")
    zone.add("mx.example.com", "A", "192.0.2.25")
    zone.add("_spf.example.net", "TXT", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all")
    zone.add(f"_dmarc.{domain}", "TXT",
             f"v=DMARC1; p=reject; rua=mailto:dmarc@{domain},mailto:agg@reports.example.org")
    zone.add(f"{domain}._report._dmarc.reports.example.org", "TXT", "v=DMARC1")
    zone.add("reports.example.org", "MX", "10 mx.reports.example.org")


@pytest.fixture
def signing_config(tmp_path, zone):
    """A config with one ed25519 signing key for example.com, published at sel1."""
    key = generate_key(ED25519_SHA256)
    key_file = tmp_path / "sel1.key"
    write_new_key(str(key_file), key)
    config = tmp_path / "authfilter.toml"
    config.write_text(f'[[signing.keys]]\ndomain = "example.com"\nselector = "sel1"\n'
                      f'algorithm = "ed25519-sha256"\nkey_file = "{key_file}"\n')
    return config, key


def test_good_domain_is_all_ok(zone, signing_config):
    config, key = signing_config
    publish_good_domain(zone)
    zone.add("sel1._domainkey.example.com", "TXT", key.dns_record())
    code, report = doctor(zone, "example.com", "--config", str(config))
    assert code == 0, report
    assert report["ok"] and report["counts"]["fail"] == 0 and report["counts"]["warn"] == 0
    assert {f["area"] for f in report["findings"]} == {"spf", "dmarc", "reports", "dkim"}
    assert "2/10 DNS lookups, 0/2 void lookups" in messages(report, "ok", "spf")
    assert "policy reject" in messages(report, "ok", "dmarc")
    assert "agg@reports.example.org may receive reports" in messages(report, "ok", "reports")
    assert "sel1._domainkey.example.com publishes this key" in messages(report, "ok", "dkim")


def test_readable_output_has_one_line_per_finding_and_the_fix(zone):
    zone.add("example.com", "TXT", "v=spf1 -all")
    code, out = doctor(zone, "example.com", as_json=False)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"authfilter doctor example.com (DNS: {zone.address})")
    assert any(line.startswith("OK    spf") for line in lines)
    fail = next(i for i, line in enumerate(lines) if line.startswith("FAIL  dmarc"))
    assert "no DMARC policy record for example.com" in lines[fail]
    assert lines[fail + 1].strip().startswith('fix: publish _dmarc.example.com TXT "v=DMARC1;')
    assert lines[-1] == "example.com: 1 problem(s), 1 warning(s): something is broken"


def test_no_spf(zone):
    zone.add("example.com", "TXT", "google-site-verification=abc")
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none; rua=mailto:d@example.com")
    zone.add("example.com", "MX", "10 mx.example.com")
    code, report = doctor(zone, "example.com", "-s", "none-such")
    assert code == 1
    assert "no SPF record at example.com" in messages(report, "fail", "spf")
    assert "policy none" in messages(report, "warn", "dmarc")      # p=none: a warning only


def test_two_spf_records(zone):
    zone.add("example.com", "TXT", "v=spf1 mx -all")
    zone.add("example.com", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    code, report = doctor(zone, "example.com")
    assert code == 1
    assert "2 SPF records at example.com" in messages(report, "fail", "spf")
    assert "RFC 7208 s. 4.5" in messages(report, "fail", "spf")


def test_spf_over_ten_lookups_counts_the_whole_include_tree(zone):
    zone.add("example.com", "TXT", "v=spf1 a mx include:a.example.net include:b.example.net -all")
    zone.add("example.com", "A", "192.0.2.1")
    zone.add("example.com", "MX", "10 mx.example.com")
    zone.add("a.example.net", "TXT", "v=spf1 " + " ".join(f"a:h{i}.example.net" for i in range(4))
             + " -all")
    zone.add("b.example.net", "TXT", "v=spf1 exists:%{i}.x.example.net redirect=c.example.net")
    zone.add("c.example.net", "TXT", "v=spf1 a:h0.example.net ~all")
    for i in range(4):
        zone.add(f"h{i}.example.net", "A", "192.0.2.2")
    code, report = doctor(zone, "example.com")
    assert code == 1
    # a, mx, 2 includes, 4 a: in the first, exists + redirect in the second, a: behind redirect
    fails = messages(report, "fail", "spf")
    assert "11/10 DNS lookups, 0/2 void lookups" in fails
    assert "RFC 7208 s. 4.6.4" in fails


def test_spf_limit_is_exact(zone):
    terms = " ".join(f"a:h{i}.example.com" for i in range(10))
    zone.add("example.com", "TXT", f"v=spf1 {terms} -all")
    for i in range(10):
        zone.add(f"h{i}.example.com", "A", "192.0.2.2")
    code, report = doctor(zone, "example.com")
    assert "10/10 DNS lookups" in messages(report, "ok", "spf")
    assert not messages(report, "fail", "spf")


def test_spf_void_lookups_syntax_and_all(zone):
    zone.add("example.com", "TXT", "v=spf1 a:gone1.example.com a:gone2.example.com mx:gone3.example.com +all")
    zone.add("broken.example.com", "TXT", "v=spf1 ip4:300.1.1.1 include: a:%{q}.example.com foo "
                                          "include:two.example.net -all")
    zone.add("two.example.net", "TXT", "v=spf1 -all")
    zone.add("two.example.net", "TXT", "v=spf1 ~all")
    zone.add("broken.example.com", "A", "192.0.2.1")
    code, report = doctor(zone, "example.com")
    assert code == 1
    spf_fails = messages(report, "fail", "spf")
    assert "3/2 void lookups" in spf_fails
    assert "+all" in spf_fails
    code, report = doctor(zone, "broken.example.com")
    spf_fails = messages(report, "fail", "spf")
    assert "'300.1.1.1' is not an IP address" in spf_fails
    assert "'include:': empty domain" in spf_fails
    assert "invalid macro" in spf_fails
    assert "unknown or malformed term 'foo'" in spf_fails
    assert "include target two.example.net has 2 SPF records" in spf_fails


def test_spf_include_that_times_out_is_temperror_not_missing(zone):
    zone.add("example.com", "TXT", "v=spf1 include:slow.example.net -all")
    zone.misbehave("slow.example.net", "timeout")
    code, report = doctor(zone, "example.com")
    assert code == 1
    assert "no DNS answer for slow.example.net TXT" in messages(report, "fail", "spf")
    assert "temperror" in messages(report, "fail", "spf")


def test_no_dmarc(zone):
    zone.add("example.com", "TXT", "v=spf1 -all")
    code, report = doctor(zone, "example.com")
    assert code == 1
    assert "no DMARC policy record for example.com" in messages(report, "fail", "dmarc")
    assert [f["fix"] for f in report["findings"] if f["area"] == "dmarc"][0].startswith(
        'publish _dmarc.example.com TXT "v=DMARC1; p=none; rua=mailto:')


@pytest.mark.parametrize("record, expected", [
    ("v=DMARC1; p=bogus", "p=bogus is not valid and no valid rua"),
    ("v=DMARC1 p=reject", "not a DMARC record: it does not start with v=DMARC1"),
])
def test_invalid_dmarc(zone, record, expected):
    zone.add("example.com", "TXT", "v=spf1 -all")
    zone.add("_dmarc.example.com", "TXT", record)
    code, report = doctor(zone, "example.com")
    assert code == 1
    assert expected in messages(report, "fail", "dmarc")


def test_two_dmarc_records(zone):
    zone.add("example.com", "TXT", "v=spf1 -all")
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none")
    code, report = doctor(zone, "example.com")
    assert code == 1
    assert "2 DMARC records at one name; all discarded" in messages(report, "fail", "dmarc")


def test_subdomain_policy_found_by_the_tree_walk(zone):
    zone.add("mail.example.com", "TXT", "v=spf1 -all")
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.com")
    zone.add("example.com", "MX", "10 mx.example.com")
    code, report = doctor(zone, "mail.example.com")
    ok = messages(report, "ok", "dmarc")
    assert "_dmarc.example.com: policy quarantine for mail.example.com" in ok
    assert "DNS tree walk" in ok


def test_unauthorized_external_rua(zone):
    zone.add("example.com", "TXT", "v=spf1 -all")
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject; rua=mailto:agg@elsewhere.example.org")
    zone.add("elsewhere.example.org", "MX", "10 mx.elsewhere.example.org")
    code, report = doctor(zone, "example.com")
    assert code == 1
    fails = [f for f in report["findings"] if f["area"] == "reports" and f["level"] == "fail"]
    assert len(fails) == 1
    assert "not authorized" in fails[0]["message"]
    assert fails[0]["fix"] == ("the operator of elsewhere.example.org must publish "
                               'example.com._report._dmarc.elsewhere.example.org TXT "v=DMARC1"')


def test_missing_and_mismatched_dkim_keys(zone, signing_config):
    config, key = signing_config
    publish_good_domain(zone)
    code, report = doctor(zone, "example.com", "--config", str(config), "-s", "extra")
    assert code == 1
    fails = messages(report, "fail", "dkim")
    assert "no TXT record at sel1._domainkey.example.com" in fails
    assert "no key at extra._domainkey.example.com" in fails
    fix = next(f["fix"] for f in report["findings"] if "sel1._domainkey" in f["message"])
    assert key.dns_record() in fix                   # the record to publish, from the key file

    other = generate_key(ED25519_SHA256)
    zone.add("sel1._domainkey.example.com", "TXT", other.dns_record())
    zone.add("extra._domainkey.example.com", "TXT", "v=DKIM1; k=rsa; p=")
    code, report = doctor(zone, "example.com", "--config", str(config), "-s", "extra")
    fails = messages(report, "fail", "dkim")
    assert "publishes a different public key than" in fails
    assert "key revoked" in fails


def test_dns_timeout_is_one_clear_line(zone):
    zone.misbehave("example.com", "timeout")
    code, report = doctor(zone, "example.com")
    assert code == 1
    assert len(report["findings"]) == 1
    finding = report["findings"][0]
    assert finding["area"] == "dns" and finding["level"] == "fail"
    assert f"the DNS server ({zone.address}) did not answer" in finding["message"]


def test_nonexistent_domain(zone):
    code, report = doctor(zone, "nowhere.example.com")
    assert code == 1
    assert "does not exist in the DNS (NXDOMAIN)" in messages(report, "fail", "dns")


@pytest.mark.parametrize("args, expected", [
    (["bad..domain"], "not a valid DNS label"),
    (["com"], "top-level domain"),
    (["example.com", "--dns", "not-an-ip"], "--dns:"),
    (["example.com", "--selector", "bad selector"], "--selector:"),
    (["example.com", "--config", "/nonexistent/authfilter.toml"], "no such file"),
])
def test_usage_errors_exit_2_with_one_clear_message(args, expected, capsys):
    """In-process (argument handling needs no DNS); the subprocess tests above cover the rest."""
    try:
        code = main(["doctor", *args])
    except SystemExit as exc:           # argparse and the config loader exit directly
        code = exc.code
    assert code == 2
    assert expected in capsys.readouterr().err


# -- an IP address: iprev and the configured DNS blocklists -----------------------------------
def test_doctor_on_an_ip_says_where_it_is_listed(zone, tmp_path):
    config = tmp_path / "authfilter.toml"
    config.write_text('[[dnsbl.lists]]\nzone = "bl.test"\n'
                      '[[dnsbl.lists]]\nzone = "refusing.test"\n'
                      '[[dnsbl.lists]]\nzone = "clean.test"\n')
    zone.add("5.2.0.192.in-addr.arpa", "PTR", "mail.example.org.")
    zone.add("mail.example.org", "A", "192.0.2.5")
    zone.add("5.2.0.192.bl.test", "A", "127.0.0.2")
    zone.add("5.2.0.192.refusing.test", "A", "127.255.255.254")
    code, report = doctor(zone, "192.0.2.5", "--config", str(config))
    assert code == 1
    assert levels(report, "iprev") == ["ok"] and "mail.example.org" in messages(report, "ok", "iprev")
    assert "listed by bl.test (127.0.0.2" in messages(report, "fail", "dnsbl")
    assert "127.255.255.254" in messages(report, "warn", "dnsbl")
    assert "not listed by clean.test" in messages(report, "ok", "dnsbl")


def test_doctor_on_an_ip_without_reverse_dns_or_lists_warns(zone):
    code, report = doctor(zone, "192.0.2.6")
    assert code == 0
    assert "no PTR record" in messages(report, "warn", "iprev")
    assert "no DNS blocklists are configured" in messages(report, "warn", "dnsbl")
