"""DKIM verification end to end: keys served by the loopback DNS server, messages signed by
dkimpy (an independent implementation), every result word and the known traps."""
import asyncio
import base64
import shutil
import subprocess
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from authfilter.checks.dkim import key_names, verify_dkim, verify_signatures
from authfilter.config import DkimConfig
from authfilter.message import Message

MESSAGE = (b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: lunch?\r\n"
           b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n"
           b"Shall we meet  at noon?\t\r\n\r\nAlice\r\n")


def rsa_pem_and_record(bits: int = 2048) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return _pem(key), _record(key.public_key())


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _record(public_key) -> bytes:
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)


@pytest.fixture(scope="module")
def rsa_key():
    return rsa_pem_and_record()


@pytest.fixture(scope="module")
def ed_key():
    private = ed25519.Ed25519PrivateKey.generate()
    seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(seed), b"v=DKIM1; k=ed25519; p=" + base64.b64encode(public)


def sign(message: bytes, pem: bytes, selector: bytes = b"sel", domain: bytes = b"example.com",
         **options) -> bytes:
    options.setdefault("canonicalize", (b"relaxed", b"relaxed"))
    return dkim.sign(message, selector, domain, pem, **options) + message


def verify(raw: bytes, resolver, settings: DkimConfig | None = None, now: float | None = None):
    return asyncio.run(verify_dkim(Message.parse(raw), resolver, settings or DkimConfig(), now=now))


def only(results):
    assert len(results) == 1, results
    return results[0]


# -- pass, and the data in the result ------------------------------------------------------
@pytest.mark.parametrize("canon", [(b"relaxed", b"relaxed"), (b"simple", b"simple"),
                                   (b"relaxed", b"simple"), (b"simple", b"relaxed")])
def test_rsa_pass_all_canonicalizations(zone, resolver, rsa_key, canon):
    zone.add("sel._domainkey.example.com", "TXT", rsa_key[1])
    r = only(verify(sign(MESSAGE, rsa_key[0], canonicalize=canon), resolver))
    assert (r.result, r.domain, r.selector, r.algorithm, r.identity, r.key_bits, r.reason) == \
        ("pass", "example.com", "sel", "rsa-sha256", "@example.com", 2048, None)
    assert len(r.header_b) == 8


def test_ed25519_pass(zone, resolver, ed_key):
    zone.add("ed._domainkey.example.com", "TXT", ed_key[1])
    raw = sign(MESSAGE, ed_key[0], b"ed", signature_algorithm=b"ed25519-sha256")
    r = only(verify(raw, resolver))
    assert (r.result, r.algorithm, r.key_bits) == ("pass", "ed25519-sha256", 256)


def test_rfc8463_appendix_a_example(zone, resolver):
    """RFC 8463 Appendix A keys; the RFC 6376 Appendix A message signed with both (the copy in
    dkimpy's test data, tests/data/rfc6376.signed.msg, which verifies with them)."""
    zone.add("brisbane._domainkey.football.example.com", "TXT",
             "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    zone.add("test._domainkey.football.example.com", "TXT",
             "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08"
             "a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM"
             "3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB")
    raw = RFC8463_SIGNED.replace(b"\n", b"\r\n")
    ed, rsa_sig = verify(raw, resolver)
    assert (ed.result, ed.selector, ed.algorithm, ed.identity) == \
        ("pass", "brisbane", "ed25519-sha256", "@football.example.com")
    assert (rsa_sig.result, rsa_sig.selector, rsa_sig.key_bits) == ("pass", "test", 1024)
    tampered = raw.replace(b"We lost the game.", b"We won the game.")
    assert [r.reason for r in verify(tampered, resolver)] == ["body hash mismatch (body changed)"] * 2


RFC8463_SIGNED = b"""DKIM-Signature: v=1; a=ed25519-sha256; c=simple/simple; 
 d=football.example.com; i=@football.example.com; 
 q=dns/txt; s=brisbane; t=1518460054; h=from : to : 
 subject : date : message-id : from : subject : date; 
 bh=4bLNXImK9drULnmePzZNEBleUanJCX5PIsDIFoH4KTQ=; 
 b=9/dsDChY0YMTtD5Eyw3wx7x22BlSJP7M5ECbJ7GWrR45nXlTCGb8l0YB
 o0wBLR++X5LqmsxXaOYLLJe46l10AQ==
DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; 
 d=football.example.com; i=@football.example.com; 
 q=dns/txt; s=test; t=1527915362; h=from : to : subject : 
 date : message-id : from : subject : date; 
 bh=4bLNXImK9drULnmePzZNEBleUanJCX5PIsDIFoH4KTQ=; 
 b=icKcLSEZYXJ95flvWE8FT6hl5iqd8MC/LEKYH0QjsqYy6MO/4pgVNCZH
 l/RAXAuADxE/40Fg7uTlxwwD1hjN2Ple6J//cJfslBdDOq6zTVbne1dqtl
 NOat7iamJ1AfRqyG+ja7a2AZsrpUuJ7VA6O+0zRYPqpwMEkEFIzI9i/Xk=
From: Joe SixPack <joe@football.example.com>
To: Suzie Q <suzie@shopping.example.net>
Subject: Is dinner ready?
Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)
Message-ID: <20030712040037.46341.5F8J@football.example.com>

Hi.

We lost the game.  Are you hungry yet?

Joe.

"""


# -- fail -----------------------------------------------------------------------------------
def test_body_and_header_changes_fail(zone, resolver, rsa_key):
    zone.add("sel._domainkey.example.com", "TXT", rsa_key[1])
    raw = sign(MESSAGE, rsa_key[0])
    body = only(verify(raw.replace(b"at noon", b"at one"), resolver))
    head = only(verify(raw.replace(b"Subject: lunch?", b"Subject: dinner?"), resolver))
    assert (body.result, body.reason) == ("fail", "body hash mismatch (body changed)")
    assert (head.result, head.reason) == ("fail", "signature did not verify")
    # relaxed: whitespace changes inside lines and trailing empty lines do not matter
    assert only(verify(raw.replace(b"meet  at", b"meet \t at") + b"\r\n\r\n", resolver)).result == "pass"


def test_rsa_sha1_fails_even_when_it_verifies(zone, resolver, rsa_key):
    zone.add("sel._domainkey.example.com", "TXT", rsa_key[1])
    r = only(verify(sign(MESSAGE, rsa_key[0], signature_algorithm=b"rsa-sha1"), resolver))
    assert (r.result, r.reason, r.algorithm) == ("fail", "rsa-sha1 not acceptable (RFC 8301)", "rsa-sha1")


def test_expired_and_future_signatures(zone, resolver, rsa_key):
    zone.add("sel._domainkey.example.com", "TXT", rsa_key[1])
    raw = sign(MESSAGE, rsa_key[0])                       # dkimpy writes t= now
    signed_at = time.time()
    assert only(verify(raw, resolver, now=signed_at - 3600)).result == "permerror"   # t= 1 h ahead
    assert only(verify(raw, resolver, now=signed_at - 60)).result == "pass"          # small skew ok
    expiring = raw.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; x=1000;", 1)
    r = only(verify(expiring, resolver, now=signed_at))
    assert r.result == "permerror" and "x= is earlier than t=" in r.reason


def test_l_tag_with_appended_content_is_policy_by_default(zone, resolver, rsa_key):
    zone.add("sel._domainkey.example.com", "TXT", rsa_key[1])
    raw = sign(MESSAGE, rsa_key[0], length=True)
    assert only(verify(raw, resolver)).result == "pass"
    appended = raw + b"Click here: http://evil.example/\r\n"
    r = only(verify(appended, resolver))
    assert (r.result, r.reason) == ("policy", "l=33 leaves 34 bytes of the body unsigned")
    assert only(verify(appended, resolver, DkimConfig(partial_body="fail"))).result == "fail"
    assert only(verify(appended, resolver, DkimConfig(partial_body="pass"))).result == "pass"
    truncated = raw[:-8] + b"\r\n"
    r = only(verify(truncated, resolver))
    assert r.result == "fail" and "shorter than l=" in r.reason


# -- temperror / permerror from the key ----------------------------------------------------------
@pytest.mark.parametrize("how", ["timeout", "servfail"])
def test_dns_trouble_is_temperror(zone, resolver, rsa_key, how):
    zone.misbehave("sel._domainkey.example.com", how)
    r = only(verify(sign(MESSAGE, rsa_key[0]), resolver))
    assert r.result == "temperror" and "sel._domainkey.example.com" in r.reason


def test_missing_revoked_and_bad_keys_are_permerror(zone, resolver, rsa_key, ed_key):
    raw = sign(MESSAGE, rsa_key[0])
    r = only(verify(raw, resolver))                                       # NXDOMAIN
    assert (r.result, r.reason) == ("permerror", "no key at sel._domainkey.example.com (nxdomain)")
    cases = {b"v=DKIM1; k=rsa; p=": "key revoked",
             b"v=DKIM1; p=MIIBIjANBgk": "not valid base64",
             b"v=DKIM1; p=MIIBIjANBgkq": "not an RSA public key",
             b"\x00\x01\x02 garbage;;": "key record syntax",
             b"v=DKIM1; k=ed25519; p=" + rsa_key[1].split(b"p=")[1]: "not 32",
             ed_key[1]: "does not match",
             b"v=DKIM1; h=sha1; " + rsa_key[1][9:]: "does not allow sha256",
             b"v=DKIM1; s=chat; " + rsa_key[1][9:]: "not for email",
             b"v=DKIM1; n=" + b"x" * 60_000 + b"; p=": "key revoked"}            # huge record
    for record, reason in cases.items():
        zone.reset()
        zone.add("sel._domainkey.example.com", "TXT", record)
        resolver.clear_cache()
        r = only(verify(raw, resolver))
        assert r.result == "permerror" and reason in r.reason, (record[:40], r)


def test_several_txt_records_pick_the_key(zone, resolver, rsa_key):
    zone.add("sel._domainkey.example.com", "TXT", "v=spf1 -all")
    zone.add("sel._domainkey.example.com", "TXT", rsa_key[1])
    raw = sign(MESSAGE, rsa_key[0])
    assert only(verify(raw, resolver)).result == "pass"
    zone.add("sel._domainkey.example.com", "TXT", rsa_pem_and_record(1024)[1])
    resolver.clear_cache()
    r = only(verify(raw, resolver))
    assert r.result == "permerror" and "2 key records" in r.reason


def test_small_rsa_key_is_permerror(zone, resolver):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a 768-bit key (cryptography refuses)")
    pem = subprocess.run(["openssl", "genrsa", "768"], capture_output=True, check=True).stdout
    key = serialization.load_pem_private_key(pem, None)
    zone.add("old._domainkey.example.com", "TXT", _record(key.public_key()))
    raw = sign(MESSAGE, _pem(key), b"old")
    r = only(verify(raw, resolver))
    assert (r.result, r.key_bits) == ("permerror", 768) and "RFC 8301" in r.reason
    # the signature itself is good: a (non-configurable) lower limit would pass it
    assert only(verify(raw, resolver, DkimConfig(min_rsa_bits=512))).result == "pass"


def test_strict_key_flag_rejects_subdomain_identity(zone, resolver, rsa_key):
    zone.add("sel._domainkey.example.com", "TXT", b"v=DKIM1; t=s; " + rsa_key[1][9:])
    exact = sign(MESSAGE, rsa_key[0], identity=b"alice@example.com")
    sub = sign(MESSAGE, rsa_key[0], identity=b"alice@mail.example.com")
    assert only(verify(exact, resolver)).result == "pass"
    assert "t=s" in only(verify(sub, resolver)).reason


def test_testing_key_passes_with_a_note(zone, resolver, rsa_key):
    zone.add("sel._domainkey.example.com", "TXT", b"v=DKIM1; t=y; " + rsa_key[1][9:])
    r = only(verify(sign(MESSAGE, rsa_key[0]), resolver))
    assert (r.result, r.reason) == ("pass", "key in testing mode (t=y)")


# -- several signatures (trap 4), the limit, the pure function -----------------------------------
def test_every_signature_is_verified_and_the_limit_holds(zone, resolver, rsa_key, ed_key):
    zone.add("sel._domainkey.example.com", "TXT", rsa_key[1])
    zone.add("ed._domainkey.example.org", "TXT", ed_key[1])
    raw = sign(MESSAGE, rsa_key[0])
    raw = sign(raw, ed_key[0], b"ed", b"example.org", signature_algorithm=b"ed25519-sha256")
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; d=bad.example; s=x; h=from; bh=YQ==; b=YQ==\r\n" + raw
    results = verify(raw, resolver)
    assert [(r.result, r.domain) for r in results] == \
        [("permerror", "bad.example"), ("pass", "example.org"), ("pass", "example.com")]
    limited = verify(raw, resolver, DkimConfig(max_signatures=1))
    assert [r.result for r in limited] == ["permerror", "policy"]
    assert limited[1].reason == "not verified: over the limit of 1 signatures; 1 more not verified either"
    assert limited[1].domain == "example.org"


def test_thousands_of_signatures_stay_bounded(zone, resolver):
    junk = b"".join(b"DKIM-Signature: v=1; a=rsa-sha256; d=d%d.example; s=s; h=from; bh=YQ==; b=YQ==\r\n" % i
                    for i in range(3000))
    message = Message.parse(junk + MESSAGE)
    assert len(key_names(message, 5)) == 5
    results = asyncio.run(verify_dkim(message, resolver, DkimConfig()))
    assert len(results) == 6 and [r.result for r in results] == ["permerror"] * 5 + ["policy"]


def test_pure_function_without_fetched_keys_is_temperror(rsa_key):
    results = verify_signatures(Message.parse(sign(MESSAGE, rsa_key[0])), {}, DkimConfig(), time.time())
    assert only(results).result == "temperror" and "not looked up" in results[0].reason


def test_unsigned_message_has_no_results(resolver):
    assert verify(MESSAGE, resolver) == ()


# -- hostile input: never a traceback --------------------------------------------------------------
HOSTILE = [
    b"DKIM-Signature: \x00\x01\xff\r\n\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=\xc3\xa9xample.com; s=s; h=from; bh=YQ==; b=YQ==\r\nFrom: x\r\n\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=YQ==; b=" + b"A" * 5000 + b"\r\n\r\n",
    b"DKIM-Signature:" + b" v=1;" * 2000 + b"\r\n\r\n",
    b"DKIM-Signature: v=1; i=\xff@example.com; a=rsa-sha256; d=example.com; s=sel; h=from; bh=YQ==; b=YQ==\r\n\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=" + b"from:" * 5000 + b"x; bh=YQ==; b=YQ==\r\n\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=from; l=99999999999999999999999; bh=YQ==; b=YQ==\r\n\r\n",
]


@pytest.mark.parametrize("raw", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_signatures_give_a_result(zone, resolver, rsa_key, raw):
    zone.add("sel._domainkey.example.com", "TXT", rsa_key[1])
    results = verify(raw + MESSAGE, resolver)
    assert results and all(r.result in ("permerror", "fail") for r in results), results


def test_odd_messages_verify(zone, resolver, rsa_key):
    zone.add("sel._domainkey.example.com", "TXT", rsa_key[1])
    many = b"".join(b"X-Trace-%d: hop %d\r\n" % (i, i) for i in range(5000))
    long_line = b"X-Long: " + b"y" * 5000 + b"\r\n"
    body = b"nul \x00 byte, 8-bit \xe9\xff, a long line " + b"z" * 3000 + b"\r\n"
    for message in (many + MESSAGE, long_line + MESSAGE, MESSAGE + body,
                    MESSAGE.replace(b"\r\n", b"\n"), MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n"):
        raw = sign(message, rsa_key[0], include_headers=[b"from", b"to", b"subject"])
        assert only(verify(raw, resolver)).result == "pass", message[:60]


def test_utf8_headers_and_identity(zone, resolver, rsa_key):
    """RFC 8616: UTF-8 in header fields and in the local part of i=."""
    zone.add("sel._domainkey.example.com", "TXT", rsa_key[1])
    message = "From: J\u00f6rg <j\u00f6rg@example.com>\r\nSubject: Gr\u00fc\u00dfe\r\n\r\nHallo\r\n".encode()
    raw = sign(message, rsa_key[0], identity="j\u00f6rg@example.com".encode())
    r = only(verify(raw, resolver))
    assert (r.result, r.identity) == ("pass", "j\u00f6rg@example.com")
