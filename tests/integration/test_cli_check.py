"""`authfilter check` end to end: a real subprocess, real DNS on loopback, real signatures."""
import base64
import json
import subprocess
import sys

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hello\r\n"
           b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n"
           b"Hello Bob.\r\n")


@pytest.fixture(scope="module")
def key():
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                          serialization.NoEncryption())
    pub = base64.b64encode(k.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    return pem, pub


@pytest.fixture
def example_org(zone, key):
    zone.add("example.org", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    zone.add("s1._domainkey.example.org", "TXT", f"v=DKIM1; k=rsa; p={key[1]}")
    zone.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    return zone


def signed(pem: bytes, raw: bytes = MESSAGE) -> bytes:
    return dkim.sign(raw, b"s1", b"example.org", pem, canonicalize=(b"relaxed", b"relaxed")) + raw


def check(zone, *args: str, stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "authfilter", "check", "--dns", zone.address, *args],
                          input=stdin, capture_output=True, timeout=60)


def test_json_verdict_for_a_passing_message(example_org, key):
    r = check(example_org, "--ip", "192.0.2.5", "--helo", "mail.example.org",
              "--mail-from", "alice@example.org", "--json", "-", stdin=signed(key[0]))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["spf"] == {"result": "pass", "identity": "mailfrom", "domain": "example.org",
                          "sender": "alice@example.org", "reason": out["spf"]["reason"]}
    assert [(d["result"], d["domain"], d["selector"], d["algorithm"]) for d in out["dkim"]] == \
        [("pass", "example.org", "s1", "rsa-sha256")]
    assert out["arc"]["result"] == "none" and out["arc"]["instances"] == 0
    dm = out["dmarc"]
    assert (dm["result"], dm["from_domain"], dm["policy_domain"], dm["org_domain"], dm["policy"],
            dm["disposition"], dm["spf_aligned"], dm["dkim_aligned"]) == \
        ("pass", "example.org", "example.org", "example.org", "reject", "none", True, True)
    ar = out["authentication_results"]
    assert "spf=pass" in ar and "dkim=pass" in ar and "dmarc=pass" in ar


def test_spoofed_message_fails_dmarc_with_reject(example_org):
    r = check(example_org, "--ip", "198.51.100.9", "--mail-from", "alice@example.org", "--json",
              stdin=MESSAGE)
    out = json.loads(r.stdout)
    assert r.returncode == 0
    assert out["spf"]["result"] == "fail" and out["dkim"] == []
    assert (out["dmarc"]["result"], out["dmarc"]["disposition"]) == ("fail", "reject")


def test_null_sender_checks_helo(example_org):
    example_org.add("mail.example.org", "TXT", "v=spf1 ip4:192.0.2.5 -all")
    r = check(example_org, "--ip", "192.0.2.5", "--helo", "mail.example.org", "--mail-from", "",
              "--json", stdin=MESSAGE)
    spf = json.loads(r.stdout)["spf"]
    assert (spf["result"], spf["identity"], spf["domain"]) == ("pass", "helo", "mail.example.org")


def test_readable_output_has_our_header_and_a_summary(example_org, key, tmp_path):
    path = tmp_path / "msg.eml"
    path.write_bytes(signed(key[0]))
    r = check(example_org, "--ip", "192.0.2.5", "--mail-from", "alice@example.org", str(path),
              stdin=b"")
    text = r.stdout.decode()
    assert r.returncode == 0 and text.startswith("Authentication-Results: ")
    assert "DKIM   pass" in text and "DMARC  pass" in text


def test_dns_down_gives_temperror_not_a_traceback(key):
    r = subprocess.run([sys.executable, "-m", "authfilter", "check", "--dns", "127.0.0.1:9",
                        "--ip", "192.0.2.5", "--mail-from", "alice@example.org", "--json"],
                       input=signed(key[0]), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["spf"]["result"] == "temperror" and out["dkim"][0]["result"] == "temperror"
    assert out["dmarc"]["result"] == "temperror"


@pytest.mark.parametrize("args,needle", [
    (["--ip", "999.1.1.1"], b"--ip"),
    (["--ip", "192.0.2.1", "/nonexistent/file.eml"], b"cannot read"),
    (["--ip", "192.0.2.1", "--dns", "nameserver.example"], b"--dns"),
    ([], b"--ip"),
])
def test_bad_usage_exits_2_with_a_message(args, needle):
    r = subprocess.run([sys.executable, "-m", "authfilter", "check", *args], input=b"",
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and needle in r.stderr and b"Traceback" not in r.stderr


@pytest.mark.parametrize("raw", [
    b"", b"\x00\x01\x02 binary \xff\xfe", b"no header separator at all",
    b"From: a@example.org\n\nbare LF only\n",
    b"X-Long: " + b"y" * 5000 + b"\r\nFrom: a@example.org\r\n\r\nbody",
    b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"From: a@example.org\r\n\r\nb",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=s1; b=;;; bh=!!\r\nFrom: a@example.org\r\n\r\nb",
])
def test_malformed_messages_get_a_verdict(example_org, raw):
    r = check(example_org, "--ip", "192.0.2.5", "--mail-from", "alice@example.org", "--json", stdin=raw)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dmarc"]["result"] in ("pass", "fail", "none", "permerror", "temperror")
