"""ARC chain structure (RFC 8617 section 4.2.1, 5.2 steps 1-3): decided before any key is needed."""
import pytest

from authfilter.checks.arc import key_names, validate_chain
from authfilter.message import Message

BODY = b"From: a@example.com\r\nSubject: s\r\n\r\nhello\r\n"


def arc_set(i: int, cv: str | None = None, domain: str = "example.org") -> bytes:
    cv = cv or ("none" if i == 1 else "pass")
    return (f"ARC-Seal: i={i}; a=rsa-sha256; cv={cv}; d={domain}; s=k; b=YWJj\r\n"
            f"ARC-Message-Signature: i={i}; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=k; "
            f"h=from:subject; bh=YWJj; b=YWJj\r\n"
            f"ARC-Authentication-Results: i={i}; mx.{domain}; spf=pass\r\n").encode()


def chain(*sets: bytes) -> Message:
    return Message.parse(b"".join(reversed(sets)) + BODY)


def validate(message: Message):
    return validate_chain(message, {}, 1_700_000_000.0)


def test_no_arc_headers_is_none():
    assert validate(Message.parse(BODY)).result == "none"
    assert validate(Message.parse(b"")).result == "none"


@pytest.mark.parametrize("message, reason", [
    (chain(arc_set(1), arc_set(3)), "i=2 is incomplete"),
    (chain(arc_set(1).split(b"\r\n", 1)[1]), "i=1 is incomplete"),
    (chain(arc_set(1), arc_set(1)), "more than one"),
    (chain(arc_set(1, cv="pass")), "cv=pass, expected cv=none"),
    (chain(arc_set(1), arc_set(2, cv="none")), "cv=none, expected cv=pass"),
    (chain(arc_set(1), arc_set(2, cv="fail")), "i=2 has cv=fail"),
    (chain(arc_set(1, cv="fail"), arc_set(2)), "cv=fail, expected cv=none"),
    (chain(*(arc_set(i) for i in range(1, 52))), "i=51"),
    (chain(arc_set(1).replace(b"i=1; mx", b"i=0; mx")), "outside 1..50"),
    (chain(arc_set(1).replace(b"i=1; mx", b"mx")), "does not start with i="),
    (chain(arc_set(1).replace(b"i=1; a=rsa-sha256; cv", b"i=x; a=rsa-sha256; cv")), "no valid instance"),
    (chain(arc_set(1).replace(b"cv=none;", b"cv=none; cv=none;")), "duplicate tag"),
    (chain(arc_set(1).replace(b"s=k; b", b"s=k; h=from; b", 1)), "h= is not allowed"),
])
def test_broken_structure_fails_without_keys(message, reason):
    result = validate(message)
    assert result.result == "fail" and reason in result.reason, result


def test_sound_structure_needs_the_keys():
    message = chain(arc_set(1), arc_set(2, domain="example.net"))
    assert key_names(message) == ["k._domainkey.example.net", "k._domainkey.example.org"]
    result = validate(message)
    assert (result.result, result.instances, result.sealers, result.ams_domain) == \
        ("fail", 2, ("example.org", "example.net"), "example.net")
    assert result.reason.startswith("temperror: ARC-Message-Signature i=2: key")


def test_hostile_arc_headers_never_raise():
    for junk in (b"ARC-Seal: \x00\xff\r\n", b"ARC-Seal:" + b" i=1;" * 3000 + b"\r\n",
                 b"ARC-Authentication-Results: i=99999999999999999999; x\r\n",
                 b"ARC-Message-Signature: i=1; h=" + b"a:" * 10000 + b"b\r\n"):
        assert validate(Message.parse(junk + BODY)).result == "fail"


@pytest.mark.parametrize("instance", ["²", "١", "1²", "٣"])
def test_an_instance_in_other_digits_is_a_broken_chain_not_an_exception(instance):
    """Found by tests/unit/test_fuzz_parsers.py: "²" passed str.isdigit() and int() raised
    ValueError, which would have tempfailed the message on every retry; "١" (ARABIC-INDIC ONE)
    was read as instance 1.  RFC 8617 s. 4.2.1 instance = 1*2DIGIT: ASCII digits only."""
    raw = arc_set(1).replace(b"ARC-Seal: i=1", f"ARC-Seal: i={instance}".encode())
    result = validate(chain(raw))
    assert result.result == "fail" and "no valid instance" in result.reason
