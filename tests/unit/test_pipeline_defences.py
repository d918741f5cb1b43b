"""The early defences through the pipeline: deny lists, DNS blocklists, iprev rules.

What a front-end acts on: the reply :meth:`Transaction.recipient` gives at RCPT (None: go on),
and the disposition at the end of the message (a front-end that never asks at RCPT, such as
``authfilter check``, gets the same refusal there).  DNS from a StaticResolver.
"""
from __future__ import annotations

import asyncio
import logging

import pytest

from authfilter.config import from_dict
from authfilter.dns import StaticResolver
from authfilter.pipeline import Pipeline, SessionFacts
from authfilter.policy import PolicyError
from authfilter.runtime import Runtime

from .test_pipeline import AUTHSERV, CLIENT, message, result_words, zone

ZEN = {"zone": "zen.example", "listed": ["127.0.0.2-127.0.0.11"]}
LISTED = {("10.2.0.192.zen.example", "A"): ["127.0.0.2"]}        # CLIENT is 192.0.2.10
PTR = "10.2.0.192.in-addr.arpa"


def build(records: dict, settings: dict | None = None) -> tuple[Pipeline, StaticResolver]:
    resolver = StaticResolver({**zone(), **records})
    config = from_dict({"general": {"authserv_id": AUTHSERV}, **(settings or {})})
    return Pipeline(Runtime.build(config, resolver)), resolver


def transaction(p: Pipeline, *, ip: str = CLIENT, mail_from: str = "alice@example.org",
                raw: bytes | None = None, rcpt: str = "bob@example.net", connect: bool = True):
    """RCPT's reply, and the disposition of the message when it is sent anyway."""
    async def run():
        client = p.client(ip) if connect else None
        tx = p.begin(SessionFacts(ip, "mail.example.org", mail_from), client=client)
        refusal = await tx.recipient(rcpt)
        tx.add_recipient(rcpt)
        d = await tx.finish(raw or message())
        await tx.done(None)
        if client is not None:
            client.close()
        return refusal, d
    return asyncio.run(run())


def test_a_listed_client_is_refused_554_at_rcpt_naming_the_list():
    p, _ = build(LISTED, {"dnsbl": {"lists": [ZEN]}})
    refusal, d = transaction(p)
    assert refusal.code == 554 and refusal.text.startswith("5.7.1 ")
    assert "zen.example" in refusal.text and "[192.0.2.10]" in refusal.text
    assert (d.action, d.reply) == ("reject", refusal)      # the end of the message agrees


def test_a_client_not_listed_goes_on_and_dmarc_decides():
    p, _ = build({}, {"dnsbl": {"lists": [ZEN]}})
    refusal, d = transaction(p)
    assert refusal is None and d.action == "accept"


def test_the_list_action_tempfail_gives_451():
    p, _ = build(LISTED, {"dnsbl": {"lists": [{**ZEN, "action": "tempfail"}]}})
    refusal, _ = transaction(p)
    assert refusal.code == 451 and refusal.text.startswith("4.7.1 ")


@pytest.mark.parametrize("answer", ["127.255.255.254", "timeout"])
def test_an_error_answer_refuses_nothing(answer):
    records = {("10.2.0.192.zen.example", "A"): [answer] if answer[0].isdigit() else answer}
    p, _ = build(records, {"dnsbl": {"lists": [ZEN]}})
    refusal, d = transaction(p)
    assert refusal is None and d.action == "accept"


def test_tag_accepts_with_a_header_and_a_forged_tag_is_removed():
    p, _ = build(LISTED, {"dnsbl": {"lists": [{**ZEN, "action": "tag"}]}})
    forged = b"X-Authfilter-DNSBL: nothing to see\r\n"
    refusal, d = transaction(p, raw=message(extra=forged))
    assert refusal is None and d.action == "accept"
    tags = [v for n, v in d.prepend if n == "X-Authfilter-DNSBL"]
    assert len(tags) == 1 and "zen.example" in tags[0]
    assert d.remove == (("X-Authfilter-DNSBL", 1),)


def test_quarantine_action_marks_the_message():
    p, _ = build(LISTED, {"dnsbl": {"lists": [{**ZEN, "action": "quarantine"}]}})
    refusal, d = transaction(p)
    assert refusal is None and d.action == "quarantine"
    assert [n for n, _ in d.prepend] == ["Authentication-Results", "X-Authfilter-Quarantine"]


def test_an_allowlist_listing_exempts_the_client_from_the_blocklists():
    wl = {"zone": "wl.example", "action": "allow", "listed": ["127.0.10.0/24"]}
    p, _ = build({**LISTED, ("10.2.0.192.wl.example", "A"): ["127.0.10.1"]},
                 {"dnsbl": {"lists": [ZEN, wl]}})
    assert transaction(p)[0] is None


def test_weights_add_up_to_the_threshold():
    lists = [{**ZEN, "action": "score", "weight": 1}, {"zone": "b.example", "action": "score",
                                                       "weight": 1}]
    settings = {"dnsbl": {"lists": lists, "threshold": 2}}
    one, _ = build(LISTED, settings)
    assert transaction(one)[0] is None                   # score 1 < 2
    both, _ = build({**LISTED, ("10.2.0.192.b.example", "A"): ["127.0.0.2"]}, settings)
    refusal, _ = transaction(both)
    assert refusal.code == 554 and "zen.example" in refusal.text and "b.example" in refusal.text


def test_deny_ips_refuses_before_any_dns_work():
    p, resolver = build(LISTED, {"policy": {"deny_ips": ["192.0.2.0/24"]},
                                 "dnsbl": {"lists": [ZEN]}})
    refusal, _ = transaction(p)
    assert refusal.code == 554 and refusal.text == "5.7.1 Client host [192.0.2.10] blocked by local policy"
    # no DNSBL, iprev or SPF query at RCPT: only the end of the message (sent anyway) asked
    async def at_rcpt():
        tx = p.begin(SessionFacts(CLIENT, "h", "a@example.org"), client=p.client(CLIENT))
        before = resolver.stats.queries
        reply = await tx.recipient("bob@example.net")
        tx.abandon()
        return reply, resolver.stats.queries - before
    resolver.clear_cache()
    reply, queries = asyncio.run(at_rcpt())
    assert reply.code == 554 and queries == 0


def test_deny_ips_file_is_read_and_a_bad_line_is_named(tmp_path):
    listed = tmp_path / "deny.txt"
    listed.write_text("# spammers\n198.51.100.0/24\n192.0.2.10  # this one\n")
    p, _ = build({}, {"policy": {"deny_ips_file": str(listed)}})
    assert transaction(p)[0].code == 554
    listed.write_text("192.0.2.10\nnot-a-network\n")
    with pytest.raises(PolicyError, match=r"deny.txt:2: 'not-a-network' is not an IP network"):
        build({}, {"policy": {"deny_ips_file": str(listed)}})


def test_deny_domains_refuses_the_sender_at_rcpt_and_the_author_at_the_end():
    p, _ = build({}, {"policy": {"deny_domains": [".spam.example"]}})
    refusal, _ = transaction(p, mail_from="x@mail.spam.example")
    assert refusal.code == 554 and "mail.spam.example" in refusal.text
    refusal, d = transaction(p, raw=message("eve@spam.example"))
    assert refusal is None                                 # the From is not known at RCPT
    assert d.action == "reject" and d.reply.code == 554 and "spam.example" in d.reply.text


def test_iprev_is_in_authentication_results_and_refuses_only_under_the_strict_policy():
    p, _ = build({})                    # test_pipeline's zone has the PTR and A records
    refusal, d = transaction(p)
    assert refusal is None and result_words(d)["iprev"] == "pass"
    no_ptr, _ = build({(PTR, "PTR"): "nxdomain"})
    refusal, d = transaction(no_ptr)
    assert refusal is None and result_words(d)["iprev"] == "permerror"   # default: tag only
    strict, _ = build({(PTR, "PTR"): "nxdomain"}, {"policy": {"name": "strict"}})
    refusal, d = transaction(strict)
    assert refusal.code == 550 and refusal.text.startswith("5.7.25 ")
    assert d.action == "reject"


def test_dry_run_refuses_nothing_and_logs_what_it_would_have_done(caplog):
    p, _ = build(LISTED, {"dnsbl": {"lists": [ZEN]}, "policy": {"dry_run": True}})
    with caplog.at_level(logging.INFO, logger="authfilter.message"):
        refusal, d = transaction(p)
    assert refusal is None and d.action == "accept"
    assert d.decision.would_be == "reject"


def test_a_trusted_client_is_not_screened():
    p, _ = build(LISTED, {"dnsbl": {"lists": [ZEN]}, "policy": {"trusted_networks": ["192.0.2.0/24"]}})
    assert transaction(p)[0] is None


def test_without_a_client_screen_the_transaction_starts_its_own():
    p, _ = build(LISTED, {"dnsbl": {"lists": [ZEN]}})
    refusal, _ = transaction(p, connect=False)
    assert refusal.code == 554


def test_a_refusal_is_one_log_line_and_counted(caplog):
    p, _ = build(LISTED, {"dnsbl": {"lists": [ZEN]}})

    async def refused_twice():
        tx = p.begin(SessionFacts(CLIENT, "mail.example.org", "alice@example.org"))
        for rcpt in ("bob@example.net", "carol@example.net"):
            assert (await tx.recipient(rcpt)).code == 554
        tx.abandon()                    # the client gives up: no DATA, no finish()
    with caplog.at_level(logging.INFO, logger="authfilter.message"):
        asyncio.run(refused_twice())
    lines = [r.getMessage() for r in caplog.records if "stage=rcpt" in r.getMessage()]
    assert len(lines) == 2 and "rcpt=carol@example.net" in lines[1]
    assert "outcome=refused" in lines[0] and "defence=dnsbl" in lines[0]
    assert p.runtime.metrics.registry.get_sample_value(
        "authfilter_rcpt_refused_total", {"defence": "dnsbl"}) == 2
    assert p.runtime.metrics.registry.get_sample_value(
        "authfilter_results_total", {"method": "dnsbl", "result": "listed"}) == 1


def test_an_unknown_client_is_verified_with_what_there_is_not_trusted():
    p, _ = build({})
    refusal, d = transaction(p, ip=None)
    words = result_words(d)
    assert refusal is None and words["spf"] == "none" and "iprev" not in words
    assert words["dmarc"] == "fail" and d.action == "reject"    # p=reject, nothing aligned
