"""ARC chains sealed by dkimpy (one and two hops) validate with ours, and both agree on damage."""
import asyncio

import dkim
import pytest

from authfilter.checks.arc import validate_arc
from authfilter.message import Message
from tests.integration.test_dkim_verify import MESSAGE, rsa_pem_and_record


@pytest.fixture(scope="module")
def sealers():
    return {"example.org": rsa_pem_and_record(2048), "example.net": rsa_pem_and_record(1024)}


def seal(raw: bytes, domain: str, sealers, cv: str) -> bytes:
    """One hop: our AR header with arc=<cv>, then dkimpy's ARC set on top."""
    srv_id = f"mx.{domain}".encode()
    raw = b"Authentication-Results: " + srv_id + b"; arc=" + cv.encode() + b"; spf=pass\r\n" + raw
    arc_set = dkim.arc_sign(raw, b"arc", domain.encode(), sealers[domain][0], srv_id=srv_id)
    assert arc_set, "dkimpy sealed nothing"
    return b"".join(arc_set) + raw


def publish(zone, sealers):
    records = {}
    for domain, (_, record) in sealers.items():
        zone.add(f"arc._domainkey.{domain}", "TXT", record)
        records[f"arc._domainkey.{domain}.".encode()] = record
    return lambda name, timeout=5: records.get(name)


def validate(raw: bytes, resolver):
    return asyncio.run(validate_arc(Message.parse(raw), resolver))


def test_one_and_two_hops(zone, resolver, sealers):
    dnsfunc = publish(zone, sealers)
    one = seal(MESSAGE, "example.org", sealers, "none")
    two = seal(one, "example.net", sealers, "pass")
    for raw, count, domains in ((one, 1, ("example.org",)), (two, 2, ("example.org", "example.net"))):
        assert dkim.arc_verify(raw, dnsfunc=dnsfunc)[0] == b"pass"
        result = validate(raw, resolver)
        assert (result.result, result.instances, result.sealers, result.oldest_pass, result.ams_domain) == \
            ("pass", count, domains, 0, domains[-1])


def test_damage_after_the_last_hop_fails_in_both(zone, resolver, sealers):
    dnsfunc = publish(zone, sealers)
    two = seal(seal(MESSAGE, "example.org", sealers, "none"), "example.net", sealers, "pass")
    for damaged in (two.replace(b"noon", b"nine"), two.replace(b"Subject: lunch?", b"Subject: x")):
        assert dkim.arc_verify(damaged, dnsfunc=dnsfunc)[0] == b"fail"
        result = validate(damaged, resolver)
        assert result.result == "fail" and "ARC-Message-Signature i=2" in result.reason


def test_change_between_hops_moves_oldest_pass(zone, resolver, sealers):
    """A list that edits the body and seals: the chain passes, AMS 1 no longer validates."""
    dnsfunc = publish(zone, sealers)
    one = seal(MESSAGE, "example.org", sealers, "none")
    two = seal(one.replace(b"noon", b"nine"), "example.net", sealers, "pass")
    assert dkim.arc_verify(two, dnsfunc=dnsfunc)[0] == b"pass"
    result = validate(two, resolver)
    assert (result.result, result.oldest_pass) == ("pass", 2)


def test_key_trouble(zone, resolver, sealers):
    raw = seal(MESSAGE, "example.org", sealers, "none")
    zone.misbehave("arc._domainkey.example.org", "servfail")
    result = validate(raw, resolver)
    assert result.result == "fail" and result.reason.startswith("temperror: ")
    zone.reset()
    resolver.clear_cache()
    result = validate(raw, resolver)                             # NXDOMAIN
    assert result.result == "fail" and "no key at arc._domainkey.example.org" in result.reason
