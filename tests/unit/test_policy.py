"""Policy decisions: verdict + session facts -> action, for the bundled policies and overrides."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from authfilter.config import Config
from authfilter.policy import (BUNDLED_POLICIES, Policy, PolicyError, find_policy_file,
                               load_rules)
from authfilter.results import ArcResult, DkimResult, DmarcResult, SessionFacts, SpfResult, Verdict

FACTS = SessionFacts.create("192.0.2.10", "mx.sender.example", "bounce@sender.example",
                            ["bob@example.net"])


def verdict(dmarc="pass", policy="reject", disposition=None, spf="pass", arc="none",
            sealers=(), record=None, from_domain="example.org", policy_domain="example.org"):
    if disposition is None:
        disposition = policy if dmarc == "fail" else "none"
    return Verdict(
        spf=SpfResult(spf, "mailfrom", "sender.example", "bounce@sender.example"),
        dkim=(DkimResult("fail", "example.org", "sel", "rsa-sha256"),),
        arc=ArcResult(arc, len(sealers), tuple(sealers)),
        dmarc=DmarcResult(dmarc, from_domain, policy_domain, "example.org", policy=policy,
                          disposition=disposition, record=record))


def policy(name="default", **settings) -> Policy:
    config = Config()
    config.policy.name = name
    for key, value in settings.items():
        setattr(config.policy, key, value)
    return Policy.from_config(config)


def test_default_honours_dmarc_dispositions():
    p = policy()
    assert p.decide(FACTS, verdict()).kind == "accept"
    reject = p.decide(FACTS, verdict("fail", "reject"))
    assert reject.kind == "reject" and reject.disposition == "reject" and reject.override is None
    assert reject.reply.to_bytes().startswith(b"550 5.7.26 ") and b"example.org" in reject.reply.to_bytes()
    assert reject.reply.to_bytes().count(b"\r\n") == 1 and len(reject.reply.to_bytes()) < 512
    quarantine = p.decide(FACTS, verdict("fail", "quarantine"))
    assert quarantine.kind == "quarantine"
    [(name, value)] = quarantine.add_fields
    assert name == "X-Authfilter-Quarantine" and value.startswith("dmarc=fail")
    assert "\r" not in value and "\n" not in value
    assert p.decide(FACTS, verdict("fail", "none")).kind == "accept"
    # p=reject with t=y: the engine folds testing into the disposition (RFC 9989 s. 4.7)
    assert p.decide(FACTS, verdict("fail", "reject", disposition="quarantine")).kind == "quarantine"


def test_default_never_rejects_on_spf_alone():
    p = policy()
    for dmarc in ("none", "permerror"):
        assert p.decide(FACTS, verdict(dmarc, "none", spf="fail")).kind == "accept"


def test_temperror_tempfails_only_where_the_domain_asks_for_reject():
    p = policy()
    known = verdict("temperror", "none", record={"v": "DMARC1", "p": "reject"})
    action = p.decide(FACTS, known)
    assert action.kind == "tempfail" and action.reply.to_bytes().startswith(b"451 4.")
    sub = verdict("temperror", "none", record={"v": "DMARC1", "p": "reject", "sp": "none"},
                  from_domain="sub.example.org", policy_domain="example.org")
    assert p.decide(FACTS, sub).kind == "accept"               # sp=none applies to the subdomain
    unknown = verdict("temperror", "none", record=None)
    assert p.decide(FACTS, unknown).kind == "accept"           # no record read: cannot know
    assert p.decide(FACTS, verdict("temperror", "quarantine")).kind == "accept"


def test_dmarc_temperror_is_451_where_the_record_asks_for_reject_never_550_rfc9989_s5_3_6():
    """RFC 9989 s. 5.3.6: after a temporary error "the Domain Owner Assessment Policy cannot be
    applied to the message".  The engine's temperror for an aligned key lookup that failed
    carries the policy the record asks for; the bundled policies tempfail (451) where that is
    reject and never refuse a temperror with 550."""
    for name in ("default", "strict", "monitor"):
        for asked in ("reject", "quarantine", "none"):
            action = policy(name).decide(FACTS, verdict("temperror", asked,
                                                        record={"v": "DMARC1", "p": asked}))
            assert action.kind in ("tempfail", "accept"), (name, asked)
            if action.kind == "tempfail":
                assert action.reply.to_bytes().startswith(b"451 4.4.3 ")
    aligned_key_failure = verdict("temperror", "reject", record={"v": "DMARC1", "p": "reject"})
    assert policy().decide(FACTS, aligned_key_failure).kind == "tempfail"
    asks_quarantine = verdict("temperror", "quarantine", record={"v": "DMARC1", "p": "quarantine"})
    assert policy().decide(FACTS, asks_quarantine).kind == "accept"


def test_trusted_arc_sealer_overrides_a_dmarc_failure():
    p = policy(arc_trusted_sealers=["lists.example.com"])
    failing = verdict("fail", "reject", arc="pass", sealers=("first.example", "lists.example.com"))
    action = p.decide(FACTS, failing)
    assert (action.kind, action.override) == ("accept", "trusted_forwarder")
    untrusted = verdict("fail", "reject", arc="pass", sealers=("lists.example.com", "other.example"))
    assert p.decide(FACTS, untrusted).kind == "reject"         # only the newest sealer counts
    broken = verdict("fail", "reject", arc="fail", sealers=("lists.example.com",))
    assert p.decide(FACTS, broken).kind == "reject"


def test_mailing_list_mail_is_quarantined_instead_of_rejected():
    action = policy().decide(FACTS, verdict("fail", "reject"), mailing_list=True)
    assert (action.kind, action.override) == ("quarantine", "mailing_list")


def test_allow_lists():
    by_ip = policy(allow_ips=["192.0.2.0/24"]).decide(FACTS, verdict("fail", "reject"))
    assert (by_ip.kind, by_ip.override) == ("accept", "local_policy")
    by_from = policy(allow_domains=["example.org"]).decide(FACTS, verdict("fail", "reject"))
    assert by_from.kind == "accept"
    by_sub = policy(allow_domains=[".example.org"]).decide(
        FACTS, verdict("fail", "reject", from_domain="a.example.org"))
    assert by_sub.kind == "accept"
    by_sender = policy(allow_domains=["sender.example"]).decide(FACTS, verdict("fail", "reject"))
    assert by_sender.kind == "accept"
    assert policy(allow_domains=["xample.org"]).decide(FACTS, verdict("fail", "reject")).kind == "reject"


def test_trusted_networks():
    p = policy(trusted_networks=["192.0.2.0/24"])
    assert p.is_trusted(FACTS.client_ip)
    trusted = SessionFacts.create("192.0.2.10", trusted=True)
    assert p.decide(trusted, verdict("fail", "reject")).kind == "accept"
    assert not policy().is_trusted(FACTS.client_ip)


def test_dry_run_accepts_and_remembers():
    action = policy(dry_run=True).decide(FACTS, verdict("fail", "reject"))
    assert (action.kind, action.would_be, action.reply) == ("accept", "reject", None)


def test_strict_policy():
    p = policy("strict")
    spf_fail = p.decide(FACTS, verdict("none", "none", spf="fail"))
    assert spf_fail.kind == "reject" and spf_fail.reply.to_bytes().startswith(b"550 5.7.23 ")
    assert p.decide(FACTS, verdict("pass", spf="fail")).kind == "accept"     # DMARC passed
    assert p.decide(FACTS, verdict("none", "none", spf="temperror")).reply.to_bytes().startswith(b"451 4.7.24 ")
    assert p.decide(FACTS, verdict("permerror", "none")).reply.to_bytes().startswith(b"550 5.7.1 ")
    assert p.decide(FACTS, verdict("temperror", "none")).kind == "tempfail"


def test_monitor_policy_never_acts():
    p = policy("monitor")
    for v in (verdict("fail", "reject"), verdict("temperror", "reject"), verdict("none", spf="fail")):
        assert p.decide(FACTS, v).kind == "accept"


# -- files ---------------------------------------------------------------------------------
def test_bundled_policies_load():
    for path in BUNDLED_POLICIES.glob("*.toml"):
        load_rules(path)
    assert {p.stem for p in BUNDLED_POLICIES.glob("*.toml")} >= {"default", "monitor", "strict"}


def test_policy_lookup_order_and_paths(tmp_path: Path):
    (tmp_path / "default.toml").write_text('[dmarc]\nreject = "quarantine"\n')
    assert find_policy_file("default", str(tmp_path)) == tmp_path / "default.toml"
    assert find_policy_file("strict", str(tmp_path)) == BUNDLED_POLICIES / "strict.toml"
    assert find_policy_file("default.toml", "", str(tmp_path / "authfilter.toml")) == tmp_path / "default.toml"
    with pytest.raises(PolicyError, match="no policy 'nope'"):
        find_policy_file("nope")
    with pytest.raises(PolicyError, match="not a policy name"):
        find_policy_file("bad name!")


def test_bad_policy_files_name_the_key(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[dmarc]\nreject = "bounce"\nrejekt = "reject"\n')
    with pytest.raises(PolicyError) as problem:
        load_rules(bad)
    text = "\n".join(problem.value.problems)
    assert "dmarc.reject" in text and "dmarc.rejekt: unknown key" in text
    bad.write_text("not toml [")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_rules(bad)
    bad.write_text('[quarantine]\nheader = "X Bad"\n')
    with pytest.raises(PolicyError, match="quarantine.header"):
        load_rules(bad)


def test_no_single_author_domain_is_refused_by_default_but_a_broken_record_is_not():
    """Several From fields is the classic DMARC bypass (references trap #6)."""
    import dataclasses
    two_froms = verdict("permerror", "none", from_domain="example.org")
    two_froms = dataclasses.replace(two_froms, dmarc=dataclasses.replace(
        two_froms.dmarc, author_error=True, reason="multiple From header fields (2: a, b)"))
    refused = policy().decide(FACTS, two_froms)
    assert refused.kind == "reject" and refused.reply.to_bytes().startswith(b"550 5.7.1 ")
    assert b"exactly one From" in refused.reply.to_bytes()
    assert policy().decide(FACTS, verdict("permerror", "none")).kind == "accept"   # broken record
    assert policy("monitor").decide(FACTS, two_froms).kind == "accept"


def test_a_temperror_of_a_domain_testing_its_reject_policy_is_accepted():
    """RFC 9989 s. 4.7, t=y: the domain asks that its policy not be applied yet, so a DNS
    hiccup gives it nothing to retry for."""
    v = verdict("temperror", "reject")
    testing = dataclasses.replace(v, dmarc=dataclasses.replace(v.dmarc, testing=True))
    assert Policy.from_config(Config()).decide(FACTS, testing).kind == "accept"
    assert Policy.from_config(Config()).decide(FACTS, v).kind == "tempfail"
