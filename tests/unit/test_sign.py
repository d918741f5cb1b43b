"""DKIM signing: byte-identical to dkimpy, the h= list and oversigning, and which messages are
signed at all (one From address whose domain is in the signing table)."""
from __future__ import annotations

import random

import dkim
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from authfilter.message import Message
from authfilter.signing.dkim_sign import HeaderPolicy, fold
from tests.unit.test_sign_samples import (CANONICALIZATIONS, NOW, SAMPLES, dkimpy_signature,
                                          key_of, make_signer, table_key, txt_lookup)


@pytest.fixture(scope="module")
def rsa_key():
    return key_of(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ed_key():
    return key_of(ed25519.Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def records(rsa_key, ed_key):
    return txt_lookup({"rsa1._domainkey.example.com": rsa_key.dns_record(),
                       "ed1._domainkey.example.com": ed_key.dns_record()})


def dkimpy_verifies(raw: bytes, lookup, index: int = 0) -> bool:
    return dkim.DKIM(raw).verify(idx=index, dnsfunc=lookup)


# -- the output is dkimpy's, byte for byte ---------------------------------------------------
@pytest.mark.parametrize("sample", sorted(SAMPLES))
@pytest.mark.parametrize("canonicalization", CANONICALIZATIONS)
@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_signature_is_byte_identical_to_dkimpy(sample, canonicalization, algorithm, rsa_key, ed_key):
    key, selector = (rsa_key, "rsa1") if algorithm == "rsa" else (ed_key, "ed1")
    signer = make_signer(table_key(key, selector), canonicalization=canonicalization)
    raw = SAMPLES[sample]
    outcome = signer.sign_message(raw, now=NOW)
    assert outcome.skipped is None
    names = signer.policy.names(Message.parse(raw).headers)
    expected = dkimpy_signature(raw, key, selector, "example.com", names, canonicalization, NOW)
    assert outcome.signatures == (expected,)


def _dkimpy_fold(value: bytes, name_length: int) -> bytes:
    return dkim.fold(value, namelen=name_length)


def test_fold_matches_dkimpy_except_its_blank_line_bug():
    rng = random.Random(6376)
    alphabet = b"abcdefghij=:;+/ "
    compared = 0
    for _ in range(3000):
        text = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 400))).replace(b"  ", b" ")
        text = text.strip() or b"x"
        if rng.random() < 0.5:
            text += b"\r\n"
        ours, theirs = fold(text, 14), _dkimpy_fold(text, 14)
        assert ours.replace(b"\r\n ", b"").replace(b"\r\n", b"") == \
            text.replace(b"\r\n", b"").replace(b" ", b"") or b" " in text
        if b"\r\n \r\n" in theirs:       # dkimpy leaves a line holding one space; we do not
            assert ours == theirs.replace(b"\r\n \r\n", b"\r\n")
        else:
            assert ours == theirs
            compared += 1
    assert compared > 2900


# -- what h= lists ---------------------------------------------------------------------------
def test_header_list_signs_present_fields_and_oversigns():
    policy = HeaderPolicy(["from", "to", "subject", "date", "received-spf"], ["from", "to", "cc"],
                          ["date", "mime-version"])
    headers = Message.parse(b"Received: x\r\nFrom: a@example.com\r\nTo: b@example.org\r\n"
                            b"TO: c@example.org\r\nDate: now\r\nX-Other: y\r\n\r\n").headers
    # every present instance in message order; from/to/cc once more (cc although absent);
    # date once more because it is present; mime-version not at all (absent)
    assert policy.names(headers) == [b"from", b"to", b"to", b"date", b"from", b"to", b"cc", b"date"]


def test_signed_message_verifies_and_carries_dual_signatures_rsa_first(rsa_key, ed_key, records):
    signer = make_signer(table_key(ed_key, "ed1"), table_key(rsa_key, "rsa1"))
    outcome = signer.sign_message(SAMPLES["plain"], now=NOW)
    assert [k.algorithm for k in outcome.keys] == ["rsa-sha256", "ed25519-sha256"]
    assert outcome.message == b"".join(outcome.signatures) + SAMPLES["plain"]
    assert b"a=rsa-sha256" in outcome.signatures[0] and b"a=ed25519-sha256" in outcome.signatures[1]
    assert b"t=%d;" % NOW in outcome.signatures[0]
    assert dkimpy_verifies(outcome.message, records, 0)
    assert dkimpy_verifies(outcome.message, records, 1)


@pytest.mark.parametrize("added, still_valid", [
    (b"Subject: a later subject\r\n", False),            # oversigned: an added Subject breaks it
    (b"To: mallory@example.net\r\n", False),
    (b"Cc: mallory@example.net\r\n", False),             # absent when signed, but oversigned
    (b"From: other@example.com\r\n", False),
    (b"Date: Tue, 7 Jan 2025 10:00:00 +0000\r\n", False),  # present when signed: oversigned
    (b"X-Mailer: added by a relay\r\n", True),          # not signed at all
    (b"Received: by relay.example.net\r\n", True),
])
def test_fields_added_after_signing(added, still_valid, rsa_key, records):
    signer = make_signer(table_key(rsa_key, "rsa1"))
    signed = signer.sign_message(SAMPLES["plain"], now=NOW).message
    head, _, body = signed.partition(b"\r\n\r\n")
    assert dkimpy_verifies(signed, records)
    assert dkimpy_verifies(head + b"\r\n" + added + b"\r\n" + body, records) is still_valid


def test_date_added_to_a_message_without_one_keeps_the_signature(rsa_key, records):
    """Postfix's cleanup adds a missing Date: Date is oversigned only when present."""
    raw = SAMPLES["plain"].replace(b"Date: Mon, 6 Jan 2025 10:00:00 +0000\r\n", b"")
    signed = make_signer(table_key(rsa_key, "rsa1")).sign_message(raw, now=NOW).message
    head, _, body = signed.partition(b"\r\n\r\n")
    assert dkimpy_verifies(head + b"\r\nDate: Tue, 7 Jan 2025 10:00:00 +0000\r\n\r\n" + body, records)


def test_bare_lf_input_is_signed_in_crlf_form(rsa_key, records):
    outcome = make_signer(table_key(rsa_key, "rsa1")).sign_message(SAMPLES["bare-lf"], now=NOW)
    assert outcome.skipped is None
    assert b"\n" not in outcome.message.replace(b"\r\n", b"")
    assert dkimpy_verifies(outcome.message, records)


# -- which messages are signed ---------------------------------------------------------------
@pytest.mark.parametrize("from_fields, reason", [
    (b"From: a@example.com\r\nFrom: b@example.com\r\n", "2 From header fields"),
    (b"From: a@example.com, b@example.com\r\n", "From names 2 addresses"),
    (b"From: team: a@example.com, b@example.com;\r\n", "From names 2 addresses"),
    (b"From: undisclosed:;\r\n", "From names 0 addresses"),
    (b"", "0 From header fields"),
    (b"From: <a@example.com\r\n", "From not parsable"),
    (b"From: a@[192.0.2.1]\r\n", "From not parsable"),
])
def test_messages_without_exactly_one_author_are_not_signed(from_fields, reason, rsa_key, caplog):
    raw = from_fields + b"To: x@example.org\r\nSubject: s\r\n\r\nbody\r\n"
    signer = make_signer(table_key(rsa_key, "rsa1"))
    outcome = signer.sign_message(raw, now=NOW)
    assert outcome.skipped.startswith(reason)
    assert outcome.message == raw and outcome.signatures == ()
    assert outcome.describe() == f"dkim-sign skipped: {outcome.skipped}"    # the log line


@pytest.mark.parametrize("raw", [
    b"not a header\r\nFrom: a@example.com\r\n\r\nbody\r\n",
    b" continuation first\r\nFrom: a@example.com\r\n\r\nbody\r\n",
])
def test_malformed_header_block_is_not_signed(raw, rsa_key):
    outcome = make_signer(table_key(rsa_key, "rsa1")).sign_message(raw, now=NOW)
    assert outcome.skipped.startswith("malformed header:") and outcome.message == raw


def _domains_signed(signer, from_domain: str) -> list[str]:
    raw = b"From: someone@" + from_domain.encode() + b"\r\nSubject: s\r\n\r\nbody\r\n"
    return [k.selector for k in signer.sign_message(raw, now=NOW).keys]


def test_signing_table_exact_wildcard_and_nearest_parent(rsa_key, ed_key):
    signer = make_signer(
        table_key(rsa_key, "apex", "example.com", ("example.com",)),
        table_key(rsa_key, "subs", "example.com", ("*.example.com",)),
        table_key(rsa_key, "deep", "example.com", ("*.lists.example.com",)),
        table_key(rsa_key, "exact", "example.com", ("special.lists.example.com",)),
        table_key(ed_key, "old", "example.com", ("example.org",), active=False),
    )
    assert _domains_signed(signer, "example.com") == ["apex"]
    assert _domains_signed(signer, "mail.example.com") == ["subs"]
    assert _domains_signed(signer, "a.b.example.com") == ["subs"]
    assert _domains_signed(signer, "x.lists.example.com") == ["deep"]
    assert _domains_signed(signer, "special.lists.example.com") == ["exact"]
    assert _domains_signed(signer, "EXAMPLE.COM") == ["apex"]
    assert _domains_signed(signer, "example.net") == []
    assert _domains_signed(signer, "notexample.com") == []
    outcome = signer.sign_message(b"From: a@example.org\r\n\r\nb\r\n")
    assert outcome.skipped == "no active key for example.org"
    outcome = signer.sign_message(b"From: a@example.net\r\n\r\nb\r\n")
    assert outcome.skipped == "From domain example.net is not in the signing table"


def test_subdomain_mail_is_signed_with_the_parent_domain(rsa_key, records):
    signer = make_signer(table_key(rsa_key, "rsa1", "example.com", ("*.example.com",)))
    signed = signer.sign_message(b"From: a@news.example.com\r\nSubject: s\r\n\r\nbody\r\n", now=NOW)
    assert b"d=example.com;" in signed.signatures[0] and b"i=@example.com;" in signed.signatures[0]
    assert dkimpy_verifies(signed.message, records)


def test_internationalized_from_domain_matches_its_a_label(rsa_key):
    signer = make_signer(table_key(rsa_key, "rsa1", "xn--bcher-kva.example", ("xn--bcher-kva.example",)))
    outcome = signer.sign_message("From: a@bücher.example\r\n\r\nbody\r\n".encode(), now=NOW)
    assert outcome.skipped is None and outcome.from_domain == "xn--bcher-kva.example"
    assert b"d=xn--bcher-kva.example;" in outcome.signatures[0]


@pytest.mark.parametrize("raw", [
    b"", b"\r\n", b"\x00\x01\x02", b"From: a@example.com", b"From: a@example.com\r\n" * 3,
    b"not a header\r\nFrom: a@example.com\r\n\r\n", b" continuation first\r\nFrom: a@example.com\r\n\r\n",
    b"From: a@example.com\r\n" + b"X-Long: " + b"a" * 100_000 + b"\r\n\r\nbody",
    b"From: a@example.com\r\n" + b"X-Many: v\r\n" * 20_000 + b"\r\nbody",
    b"From: \xff\xfe@example.com\r\n\r\n", b"From: a@example.com\r\n\r\n" + bytes(range(256)) * 10,
])
def test_bad_input_never_raises(raw, rsa_key, records):
    """Whatever comes in, a message goes out; what is signed verifies."""
    outcome = make_signer(table_key(rsa_key, "rsa1")).sign_message(raw, now=NOW)
    assert isinstance(outcome.message, bytes)
    if outcome.signatures:
        assert dkimpy_verifies(outcome.message, records)
