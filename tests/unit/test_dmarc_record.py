"""DMARC record parsing and the pure parts of discovery (RFC 9989 s. 4.7, 4.8, 4.10)."""
import pickle

import pytest

from authfilter.checks.dmarc import (DomainPolicy, PolicyDiscovery, RecordLookup, TreeWalk,
                                     tree_walk_targets)
from authfilter.dmarcrecord import (DmarcRecord, RecordError, is_dmarc_record, parse_record,
                                    select_record)


def record(text, mode="rfc9989"):
    parsed = parse_record(text, mode=mode)
    assert isinstance(parsed, DmarcRecord), parsed
    return parsed


def test_full_record():
    r = record(b"v=DMARC1; p=Reject; sp=quarantine; np=none; adkim=s; aspf=s; psd=n; t=y; "
               b"rua=mailto:agg@example.com, mailto:x@example.net!10m; ruf=mailto:f@example.com; "
               b"fo=1:d:s")
    assert (r.p, r.sp, r.np, r.adkim, r.aspf, r.psd, r.testing) == \
        ("reject", "quarantine", "none", "s", "s", "n", True)
    assert r.rua == ("mailto:agg@example.com", "mailto:x@example.net")
    assert r.ruf == ("mailto:f@example.com",)
    assert r.fo == ("1", "d", "s")
    assert r.tags["p"] == "Reject" and r.policy_error is None and r.problems == ()


def test_defaults():
    r = record("v=DMARC1")
    assert (r.p, r.sp, r.np, r.adkim, r.aspf, r.psd, r.testing, r.fo) == \
        ("none", None, None, "r", "r", "u", False, ("0",))


@pytest.mark.parametrize("text", [
    "p=reject; v=DMARC1", "v=dmarc1; p=reject", "v=DMARC2; p=reject", " v=DMARC1; p=reject",
    "v=DMARC10; p=reject", "v:DMARC1; p=reject", "", "v=spf1 -all",
])
def test_version_must_come_first_and_match_exactly(text):
    assert not is_dmarc_record(text)
    assert isinstance(parse_record(text), RecordError)


@pytest.mark.parametrize("text", ["v=DMARC1", "v = DMARC1 ; p=none", "V=DMARC1;p=none;",
                                  "v=DMARC1;"])
def test_version_forms_accepted(text):
    assert is_dmarc_record(text)


def test_unknown_and_malformed_tags_are_ignored():
    r = record("v=DMARC1; p=quarantine; foo=bar; garbage; 9x=1; p=none")
    assert r.p == "quarantine"
    assert r.tags["foo"] == "bar"
    assert any("repeated" in p for p in r.problems)
    assert any("malformed" in p for p in r.problems)


@pytest.mark.parametrize("tag, value, attribute, default", [
    ("adkim", "x", "adkim", "r"), ("aspf", "relaxed", "aspf", "r"), ("psd", "yes", "psd", "u"),
    ("t", "1", "testing", False), ("fo", "0:1", "fo", ("0",)), ("fo", "d:d", "fo", ("0",)),
    ("fo", "x", "fo", ("0",)),
])
def test_invalid_optional_values_fall_back_to_defaults(tag, value, attribute, default):
    r = record(f"v=DMARC1; p=reject; {tag}={value}")
    assert getattr(r, attribute) == default and r.policy_error is None
    assert r.problems


def test_missing_p_is_none_in_rfc9989():
    r = record("v=DMARC1; sp=reject")
    assert r.p == "none" and r.policy_error is None and r.policy_for("subdomain") == "reject"


@pytest.mark.parametrize("text", ["v=DMARC1; p=bogus", "v=DMARC1; p=reject; sp=bogus",
                                  "v=DMARC1; p=reject; np=bogus",
                                  "v=DMARC1; p=bogus; rua=not a uri"])
def test_invalid_policy_without_rua_means_no_dmarc(text):
    assert record(text).policy_error


@pytest.mark.parametrize("text", ["v=DMARC1; p=bogus; rua=mailto:a@example.com",
                                  "v=DMARC1; p=reject; np=x; rua=mailto:a@example.com"])
def test_invalid_policy_with_rua_acts_as_p_none(text):
    r = record(text)
    assert r.policy_error is None
    assert [r.policy_for(k) for k in ("self", "subdomain", "nonexistent")] == ["none"] * 3


def test_policy_for_defaults_np_to_sp_then_p():
    assert record("v=DMARC1; p=reject; sp=quarantine").policy_for("nonexistent") == "quarantine"
    assert record("v=DMARC1; p=reject").policy_for("nonexistent") == "reject"
    assert record("v=DMARC1; p=none; np=reject").policy_for("subdomain") == "none"


def test_existence_check_only_when_np_changes_the_outcome():
    assert record("v=DMARC1; p=none; np=reject").needs_existence_check
    assert not record("v=DMARC1; p=reject; np=reject").needs_existence_check
    assert not record("v=DMARC1; p=reject; sp=none").needs_existence_check


def test_rua_validation_keeps_valid_uris():
    r = record("v=DMARC1; p=none; rua=mailto:a@example.com,bad uri, https://r.example/x%2C")
    assert r.rua == ("mailto:a@example.com", "https://r.example/x%2C")


def test_rfc9989_ignores_historic_tags_and_rfc7489_ignores_new_ones():
    modern = record("v=DMARC1; p=reject; pct=10; np=none; t=y")
    assert modern.pct == 100 and modern.np == "none" and modern.testing
    legacy = record("v=DMARC1; p=reject; pct=10; np=none; t=y; ri=3600; rf=afrf", "rfc7489")
    assert legacy.pct == 10 and not legacy.testing and legacy.ri == 3600
    assert legacy.np == "none"                       # RFC 9091 added np to RFC 7489 (issue 12)


def test_rfc7489_mode_reads_np_as_rfc9091_s3_2_added_it():
    """RFC 9091 s. 3.2: np "applies only to non-existent subdomains of the domain queried";
    its syntax is that of p, so an invalid np is handled like an invalid sp (RFC 7489
    s. 6.6.3 step 6)."""
    r = record("v=DMARC1; p=none; sp=quarantine; np=reject", "rfc7489")
    assert [r.policy_for(k) for k in ("self", "subdomain", "nonexistent")] == \
        ["none", "quarantine", "reject"]
    assert r.needs_existence_check and not r.problems
    assert record("v=DMARC1; p=reject; np=bogus", "rfc7489").policy_error
    acting_none = record("v=DMARC1; p=reject; np=bogus; rua=mailto:a@example.com", "rfc7489")
    assert acting_none.policy_for("nonexistent") == "none" and acting_none.policy_error is None


@pytest.mark.parametrize("value", ["101", "-1", "ten", "5.5"])
def test_rfc7489_bad_pct_is_100(value):
    assert record(f"v=DMARC1; p=reject; pct={value}", "rfc7489").pct == 100


def test_rfc7489_requires_p():
    assert record("v=DMARC1; sp=reject", "rfc7489").policy_error
    assert record("v=DMARC1; rua=mailto:a@example.com", "rfc7489").p == "none"


def test_select_record_discards_non_dmarc_and_multiples():
    assert select_record([b"v=spf1 -all", b"hello"]) is None
    assert isinstance(select_record([b"v=spf1 -all", b"v=DMARC1; p=reject"]), DmarcRecord)
    assert isinstance(select_record([b"v=DMARC1; p=reject", b"v=DMARC1; p=none"]), RecordError)


def test_non_ascii_bytes_do_not_crash():
    r = record(b"v=DMARC1; p=reject\xff; rua=mailto:\xc3\xa9@example.com")
    assert r.policy_error            # p invalid, no valid rua


@pytest.mark.parametrize("domain, expected", [
    ("example.com", ["example.com", "com"]),
    ("a.mail.example.com", ["a.mail.example.com", "mail.example.com", "example.com", "com"]),
    ("a.b.c.d.e.f.g.h.i.j.mail.example.com",                  # RFC 9989 s. 4.10 example
     ["a.b.c.d.e.f.g.h.i.j.mail.example.com", "g.h.i.j.mail.example.com", "h.i.j.mail.example.com",
      "i.j.mail.example.com", "j.mail.example.com", "mail.example.com", "example.com", "com"]),
    ("b.c.d.e.f.g.h.example", ["b.c.d.e.f.g.h.example", "c.d.e.f.g.h.example",
                               "d.e.f.g.h.example", "e.f.g.h.example", "f.g.h.example",
                               "g.h.example", "h.example", "example"]),
    ("com", ["com"]),
])
def test_tree_walk_targets(domain, expected):
    assert tree_walk_targets(domain) == expected
    assert len(tree_walk_targets(domain)) <= 8


def walk(start, **records):
    steps = []
    for name in tree_walk_targets(start):
        text = records.get(name.replace(".", "_"))
        steps.append(RecordLookup(name, "record", record(text)) if text else RecordLookup(name, "absent"))
    return TreeWalk(start, tuple(steps))


def test_organizational_domain_selection():
    # s. 4.10.2 examples
    assert walk("a.mail.example.com", mail_example_com="v=DMARC1",
                example_com="v=DMARC1").organizational_domain == "example.com"
    assert walk("a.mail.example.com", mail_example_com="v=DMARC1; psd=n",
                example_com="v=DMARC1").organizational_domain == "mail.example.com"
    assert walk("a.mail.example.com", com="v=DMARC1; psd=y").organizational_domain == "example.com"
    assert walk("a.mail.example.com").organizational_domain == "a.mail.example.com"
    # psd=y at the start of the walk: the domain is its own organizational domain
    assert walk("bank.example", bank_example="v=DMARC1; psd=y").organizational_domain == "bank.example"


def test_discovery_objects_pickle():
    r = record("v=DMARC1; p=reject; rua=mailto:a@example.com")
    d = PolicyDiscovery("rfc9989", (DomainPolicy("example.com", record=r, policy_domain="example.com"),),
                        from_domains=("example.com",))
    assert pickle.loads(pickle.dumps(d)) == d


def test_empty_p_is_an_invalid_p():
    assert record("v=DMARC1; p=").policy_error
    assert record("v=DMARC1; p=; rua=mailto:a@example.com").p == "none"


@pytest.mark.parametrize("tag", ["pct", "ri"])
def test_numbers_too_long_for_int_fall_back_to_the_default(tag):
    """Found by tests/unit/test_fuzz_parsers.py: int() refuses more than 4300 digits with
    ValueError, which escaped parse_record.  Leading zeros still count for nothing."""
    default = {"pct": 100, "ri": 86400}[tag]
    parsed = parse_record(f"v=DMARC1; p=none; {tag}=" + "9" * 5000, mode="rfc7489")
    assert getattr(parsed, tag) == default and any(p.startswith(f"{tag}=") for p in parsed.problems)
    assert getattr(parse_record(f"v=DMARC1; p=none; {tag}=" + "0" * 5000 + "50", mode="rfc7489"), tag) == 50
    assert getattr(parse_record(f"v=DMARC1; p=none; {tag}=²", mode="rfc7489"), tag) == default
