"""The pipeline decides, with no sockets: DNS from a StaticResolver, keys from files.

Each test asserts what a front-end acts on: ``action``, ``reply``, ``remove`` and ``prepend``;
applied to the message, the result is checked with dkimpy (signatures, ARC) where it signs.
"""
from __future__ import annotations

import asyncio
import os

import authres
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from authfilter.config import from_dict
from authfilter.dns import StaticResolver
from authfilter.message import remove_from_head, render_fields
from authfilter.pipeline import Pipeline, SessionFacts
from authfilter.runtime import Runtime
from authfilter.signing.keys import RSA_SHA256, SigningKey

AUTHSERV = "mx.test"
CLIENT = "192.0.2.10"          # SPF passes for example.org from here
OTHER = "198.51.100.7"         # and fails from here


def message(from_addr: str = "alice@example.org", extra: bytes = b"",
            body: bytes = b"Hello.\r\n") -> bytes:
    return extra + (f"From: Alice <{from_addr}>\r\nTo: bob@example.net\r\nSubject: test\r\n"
                    "Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n"
                    ).encode() + body


@pytest.fixture(scope="module")
def rsa_private():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def key_file(tmp_path, rsa_private):
    path = tmp_path / "key.pem"
    path.write_bytes(rsa_private.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return str(path)


@pytest.fixture
def dns_record(rsa_private):
    return SigningKey(RSA_SHA256, rsa_private).dns_record()


def zone(dmarc: str = "v=DMARC1; p=reject", changes: dict | None = None) -> dict:
    records = {("example.org", "TXT"): [f"v=spf1 ip4:{CLIENT} -all"],
               ("_dmarc.example.org", "TXT"): [dmarc] if dmarc else "nxdomain",
               ("10.2.0.192.in-addr.arpa", "PTR"): ["mail.example.org"],     # iprev passes
               ("mail.example.org", "A"): [CLIENT]}
    records.update(changes or {})
    return records


def pipeline(records: dict, settings: dict | None = None) -> Pipeline:
    config = from_dict({"general": {"authserv_id": AUTHSERV}, **(settings or {})})
    return Pipeline(Runtime.build(config, StaticResolver(records)))


def dispose(p: Pipeline, raw: bytes, *, ip: str = CLIENT, mail_from: str = "alice@example.org",
            role: str = "inbound", arc_seal: bool = False):
    async def run():
        tx = p.begin(SessionFacts(client_ip=ip, helo="mail.example.org", mail_from=mail_from,
                                  recipients=["bob@example.net"], role=role), arc_seal=arc_seal)
        d = await tx.finish(raw)
        await tx.done(upstream_reply=(250, "2.0.0 Ok: queued as 4XYZ") if d.relays else None)
        return d
    return asyncio.run(run())


def applied(d, raw: bytes) -> bytes:
    """The message as a front-end passes it on: removals applied, fields inserted on top."""
    end = raw.find(b"\r\n\r\n") + 4
    return render_fields(d.prepend) + remove_from_head(raw[:end], d.remove) + raw[end:]


def results_of(d) -> authres.AuthenticationResultsHeader:
    [value] = [v for n, v in d.prepend if n == "Authentication-Results"]
    return authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")


def result_words(d) -> dict[str, str]:
    return {r.method: r.result for r in results_of(d).results}


def test_aligned_spf_pass_is_accepted_with_our_results_on_top():
    d = dispose(pipeline(zone()), message())
    assert (d.action, d.reply, d.remove) == ("accept", None, ())
    assert [n for n, _ in d.prepend] == ["Authentication-Results"]
    assert results_of(d).authserv_id == AUTHSERV
    assert result_words(d) == {"iprev": "pass", "spf": "pass", "dkim": "none", "arc": "none",
                               "dmarc": "pass"}


def test_dmarc_fail_under_p_reject_is_refused_with_550():
    d = dispose(pipeline(zone()), message(), ip=OTHER)
    assert d.action == "reject" and d.reply.code == 550 and d.reply.text.startswith("5.7.26 ")
    assert "example.org" in d.reply.text
    assert result_words(d)["dmarc"] == "fail" and result_words(d)["spf"] == "fail"


def test_dmarc_fail_under_p_quarantine_is_marked():
    d = dispose(pipeline(zone("v=DMARC1; p=quarantine")), message(), ip=OTHER)
    assert (d.action, d.reply) == ("quarantine", None)
    assert [n for n, _ in d.prepend] == ["Authentication-Results", "X-Authfilter-Quarantine"]
    assert d.prepend[1][1].startswith("dmarc=fail")


def test_a_dns_failure_under_the_strict_policy_is_a_tempfail_never_a_5xx():
    records = zone(changes={("_dmarc.example.org", "TXT"): "servfail",
                            ("example.org", "TXT"): "timeout"})
    d = dispose(pipeline(records, {"policy": {"name": "strict"}}), message())
    assert d.action == "tempfail" and d.reply.code == 451 and d.reply.text.startswith("4.")
    assert result_words(d)["dmarc"] == "temperror"


def test_a_trusted_client_is_accepted_unchecked():
    p = pipeline({}, {"policy": {"trusted_networks": ["192.0.2.0/24"]}})   # no DNS at all
    d = dispose(p, message())
    assert (d.action, d.reply, d.verdict) == ("accept", None, None)
    assert d.prepend == (("Authentication-Results", f"{AUTHSERV}; none"),)   # RFC 8601 s. 2.2


def test_an_allow_listed_client_is_verified_but_accepted():
    d = dispose(pipeline(zone(), {"policy": {"allow_ips": [OTHER + "/32"]}}), message(), ip=OTHER)
    assert (d.action, d.reply) == ("accept", None)
    assert d.decision.override == "local_policy"
    assert result_words(d)["dmarc"] == "fail"           # the results still say what was found


def test_forged_results_and_quarantine_marks_are_removed_others_kept():
    extra = (f"Authentication-Results: {AUTHSERV}; dmarc=pass\r\n"
             "Authentication-Results: other.example; spf=pass\r\n"
             "X-Authfilter-Quarantine: forged\r\n"
             f"Authentication-Results: (comment) {AUTHSERV.upper()}; dkim=pass\r\n").encode()
    raw = message(extra=extra)
    d = dispose(pipeline(zone()), raw)
    assert d.remove == (("Authentication-Results", 3), ("Authentication-Results", 1),
                        ("X-Authfilter-Quarantine", 1))
    out = applied(d, raw)
    assert out.count(b"Authentication-Results:") == 2 and b"other.example" in out
    assert b"forged" not in out and b"dmarc=pass\r\n" not in out.split(b"\r\n\r\n")[0][-200:]


def test_mailing_list_mail_is_softened_only_for_list_fields_in_the_header():
    listed = dispose(pipeline(zone()), message(extra=b"List-Id: <l.example.org>\r\n"), ip=OTHER)
    assert listed.action == "quarantine" and listed.decision.override == "mailing_list"
    in_body = dispose(pipeline(zone()), message(body=b"List-Id: <l.example.org>\r\n"), ip=OTHER)
    assert in_body.action == "reject"


def test_submission_is_signed_and_the_signature_verifies(key_file, dns_record):
    p = pipeline({}, {"signing": {"keys": [{"domain": "example.org", "selector": "s1",
                                            "key_file": key_file}]}})
    raw = message()
    d = dispose(p, raw, role="submission")
    assert (d.action, d.reply, d.remove, d.verdict) == ("accept", None, (), None)
    assert [n for n, _ in d.prepend] == ["DKIM-Signature"]
    lookup = {b"s1._domainkey.example.org.": dns_record.encode()}
    assert dkim.verify(applied(d, raw), dnsfunc=lambda name, timeout=5: lookup.get(name))


def test_submission_from_a_domain_not_in_the_table_passes_unsigned(key_file):
    p = pipeline({}, {"signing": {"keys": [{"domain": "example.org", "selector": "s1",
                                            "key_file": key_file}]}})
    d = dispose(p, message(from_addr="carol@elsewhere.example"), role="submission")
    assert (d.action, d.prepend) == ("accept", ())


@pytest.mark.parametrize("role", ["submission", "local"])
def test_outbound_mail_loses_forged_results_claiming_our_authserv_id(role):
    """A local user must not hand mailboxes of this host a dmarc=pass under our name."""
    forged = (b"Authentication-Results: mx.test; dmarc=pass header.from=bank.example\r\n"
              b"Authentication-Results: other.example; spf=pass\r\n")
    d = dispose(pipeline({}), message(extra=forged), role=role)
    assert d.action == "accept" and d.remove == (("Authentication-Results", 1),)


def test_inbound_arc_seal_validates(key_file, dns_record):
    p = pipeline(zone(), {"signing": {"arc": {"domain": "example.net", "selector": "arc1",
                                              "key_file": key_file}}})
    raw = message()
    d = dispose(p, raw, arc_seal=True)
    assert d.action == "accept"
    assert [n for n, _ in d.prepend] == ["Authentication-Results", "ARC-Seal",
                                         "ARC-Message-Signature", "ARC-Authentication-Results"]
    aar = d.prepend[3][1]
    assert aar.startswith(f"i=1; {AUTHSERV};") and "dmarc=pass" in aar
    lookup = {b"arc1._domainkey.example.net.": dns_record.encode()}
    cv, _, reason = dkim.arc_verify(applied(d, raw), dnsfunc=lambda name, timeout=5: lookup.get(name))
    assert cv == b"pass", reason


def test_a_refused_message_is_not_sealed(key_file):
    p = pipeline(zone(), {"signing": {"arc": {"domain": "example.net", "selector": "arc1",
                                              "key_file": key_file}}})
    d = dispose(p, message(), ip=OTHER, arc_seal=True)
    assert d.action == "reject" and [n for n, _ in d.prepend] == ["Authentication-Results"]


def test_the_transaction_keeps_the_config_it_began_with():
    p = pipeline(zone())
    facts = SessionFacts(client_ip=OTHER, mail_from="alice@example.org")

    async def run():
        tx = p.begin(facts)
        p.reload(Runtime.build(from_dict({"general": {"authserv_id": AUTHSERV},
                                          "policy": {"dry_run": True}}), StaticResolver(zone())))
        return await tx.finish(message()), await p.begin(facts).finish(message())
    before, after = asyncio.run(run())
    assert before.action == "reject" and after.action == "accept"
    assert after.decision.would_be == "reject"


def test_session_facts_take_text_and_refuse_an_unknown_role():
    facts = SessionFacts(client_ip="2001:db8::1", recipients=["a@example.org"])
    assert facts.client_ip.version == 6 and facts.recipients == ("a@example.org",)
    with pytest.raises(ValueError, match="role 'outbound'"):
        SessionFacts(client_ip="192.0.2.1", role="outbound")


def test_a_check_that_breaks_tempfails_the_message_never_rejects_it():
    """A bug in a check must not decide a message's fate: with DKIM broken, a p=reject domain
    whose SPF does not align would otherwise fail DMARC and be refused with 550."""
    from authfilter.checks import BUILT_IN, Registry
    from authfilter.checks.dkim import DkimCheck

    class BrokenDkim(DkimCheck):
        def verify(self, *args):
            raise RuntimeError("bug in the DKIM check")
    p = pipeline(zone())
    p.runtime.engine.checks = Registry(BrokenDkim() if type(c) is DkimCheck else c
                                       for c in BUILT_IN)
    d = dispose(p, message(), ip=OTHER)
    assert d.action == "tempfail" and d.reply.code == 451 and d.reply.text.startswith("4.3.0 ")
    assert "internal error in dkim check" in d.decision.reason


@pytest.mark.parametrize("role, action", [("inbound", "reject"), ("submission", "reject"),
                                          ("local", "accept")])
def test_a_header_over_the_limits_is_refused_552_before_it_is_parsed(role, action):
    """What every front-end gets (the milter too): a field folded 1,000 times is refused; local
    mail, never refused, goes on unchanged."""
    bomb = b"X-Fold: a" + b"\r\n b" * 1000 + b"\r\n"
    async def run():
        tx = pipeline(zone()).begin(SessionFacts(CLIENT, "h", "alice@example.org", role=role))
        d = await tx.finish(message(extra=bomb), crlf_only=True)
        tx.abandon()
        return d
    d = asyncio.run(run())
    assert d.action == action and d.prepend == () and d.remove == ()
    if action == "reject":
        assert d.reply == (552, "5.3.4 Error: message header field with more than 1000 lines")
