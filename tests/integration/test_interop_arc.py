"""Our ARC seals validate with dkimpy's arc_verify and with authfilter.checks.arc, keys served by
the loopback DNS server, along a realistic path: the author's domain DKIM-signs, a mailing list
changes the message (breaking DKIM) and seals it, a forwarder validates and seals again, and
the final receiver sees DKIM fail but the ARC chain pass."""
from __future__ import annotations

import asyncio

import dkim
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from authfilter.checks.arc import validate_arc
from authfilter.checks.dkim import verify_dkim
from authfilter.config import SIGNED_HEADERS, DkimConfig
from authfilter.message import Message
from authfilter.signing import ArcSealer
from tests.dnsserver import dkimpy_dnsfunc
from tests.unit.test_sign_samples import NOW, SAMPLES, key_of, make_signer, table_key


@pytest.fixture(scope="module")
def keys():
    return {"author": key_of(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "list": key_of(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "forwarder": key_of(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "ed": key_of(ed25519.Ed25519PrivateKey.generate())}


def publish(zone, keys):
    zone.add("s1._domainkey.example.com", "TXT", keys["author"].dns_record())
    zone.add("arc._domainkey.lists.example.org", "TXT", keys["list"].dns_record())
    zone.add("fwd._domainkey.forwarder.example.net", "TXT", keys["forwarder"].dns_record())
    zone.add("ed._domainkey.forwarder.example.net", "TXT", keys["ed"].dns_record())


def dkimpy_arc(raw: bytes, address: str) -> str | None:
    lookup = dkimpy_dnsfunc(address)
    cv, _, _ = dkim.arc_verify(raw, dnsfunc=lookup)
    return cv.decode() if cv else None


def ours(raw: bytes, resolver):
    async def run():
        message = Message.parse(raw)
        return (await verify_dkim(message, resolver, DkimConfig(), now=NOW + 60),
                await validate_arc(message, resolver, now=NOW + 60))
    return asyncio.run(run())


def mailing_list_changes(raw: bytes) -> bytes:
    raw = raw.replace(b"Subject: Quarterly figures", b"Subject: [team] Quarterly figures")
    return raw + b"--\r\nteam mailing list\r\n"


def test_author_list_forwarder_receiver(zone, resolver, keys):
    publish(zone, keys)
    signed = make_signer(table_key(keys["author"], "s1")).sign_message(SAMPLES["plain"], now=NOW).message

    # the list: validates (DKIM pass, no chain), changes the message, seals i=1 cv=none
    dkim_results, chain = ours(signed, resolver)
    assert [r.result for r in dkim_results] == ["pass"] and chain.result == "none"
    list_sealer = ArcSealer("lists.example.org", "arc", keys["list"], SIGNED_HEADERS)
    ar = "lists.example.org; dkim=pass header.d=example.com; arc=none"
    at_list = list_sealer.seal_message(mailing_list_changes(signed), ar, chain, now=NOW)
    assert (at_list.instance, at_list.chain_status) == (1, "none")

    # the forwarder: DKIM now fails, the chain passes; it seals i=2 cv=pass
    dkim_results, chain = ours(at_list.message, resolver)
    assert [r.result for r in dkim_results] == ["fail"]
    assert chain.result == "pass" and dkimpy_arc(at_list.message, zone.address) == "pass"
    fwd_sealer = ArcSealer("forwarder.example.net", "fwd", keys["forwarder"], SIGNED_HEADERS)
    ar = "forwarder.example.net; dkim=fail header.d=example.com; arc=pass"
    at_forwarder = fwd_sealer.seal_message(at_list.message, ar, chain, now=NOW + 5)
    assert (at_forwarder.instance, at_forwarder.chain_status) == (2, "pass")

    # the receiver: DKIM fails, both validators accept the two-hop chain
    dkim_results, chain = ours(at_forwarder.message, resolver)
    assert [r.result for r in dkim_results] == ["fail"]
    assert (chain.result, chain.instances, chain.sealers) == \
        ("pass", 2, ("lists.example.org", "forwarder.example.net"))
    assert dkimpy_arc(at_forwarder.message, zone.address) == "pass"


def test_seal_over_a_broken_chain_says_fail_to_both_validators(zone, resolver, keys):
    publish(zone, keys)
    list_sealer = ArcSealer("lists.example.org", "arc", keys["list"], SIGNED_HEADERS)
    sealed = list_sealer.seal_message(SAMPLES["plain"], "lists.example.org; arc=none",
                                      ours(SAMPLES["plain"], resolver)[1], now=NOW).message
    broken = mailing_list_changes(sealed)                       # changed after the seal
    _, chain = ours(broken, resolver)
    assert chain.result == "fail" and dkimpy_arc(broken, zone.address) == "fail"
    fwd_sealer = ArcSealer("forwarder.example.net", "fwd", keys["forwarder"], SIGNED_HEADERS)
    outcome = fwd_sealer.seal_message(broken, "forwarder.example.net; arc=fail", chain, now=NOW + 5)
    assert outcome.chain_status == "fail"
    _, after = ours(outcome.message, resolver)
    assert after.result == "fail"
    assert dkimpy_arc(outcome.message, zone.address) is None     # "the chain is terminated"


def test_ed25519_seal_validates_with_our_validator_through_dns(zone, resolver, keys):
    publish(zone, keys)
    sealer = ArcSealer("forwarder.example.net", "ed", keys["ed"], SIGNED_HEADERS)
    outcome = sealer.seal_message(SAMPLES["folded"], "forwarder.example.net; arc=none",
                                  ours(SAMPLES["folded"], resolver)[1], now=NOW)
    _, chain = ours(outcome.message, resolver)
    assert chain.result == "pass" and chain.sealers == ("forwarder.example.net",)
