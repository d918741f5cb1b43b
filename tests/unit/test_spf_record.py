"""SPF record grammar (RFC 7208 s. 4.5, 4.6.1, 5, 6, 7.1): plain calls, no DNS."""
import pytest

from authfilter.spfrecord import (Mechanism, Modifier, cidr_problem, domain_spec_problem,
                                  domain_target, final_all, has_macro, ip_problem, parse_term,
                                  spf_records, terms)


def test_records_are_selected_by_exact_version():
    """s. 4.5: "v=spf1" then a space or the end, case-insensitive; bytes are decoded."""
    assert spf_records([b"v=spf1 -all", "V=SPF1", b"v=spf10 -all", "v=spf1-all", b"spf2.0/pra",
                        b"", b"\xff"]) == ["v=spf1 -all", "V=SPF1"]


def test_terms_follow_the_version_separated_by_spaces():
    assert terms("v=spf1  a   mx\t-all") == ["a", "mx", "-all"]
    assert terms("v=spf1") == []


@pytest.mark.parametrize("term, parsed", [
    ("-all", Mechanism("-", "all", "")),
    ("all", Mechanism("", "all", "")),
    ("~Include:_spf.Example.net", Mechanism("~", "include", ":_spf.Example.net")),
    ("a:mail.example.com/24//64", Mechanism("", "a", ":mail.example.com/24//64")),
    ("ip6:2001:db8::/32", Mechanism("", "ip6", ":2001:db8::/32")),
    ("Redirect=_spf.example.net", Modifier("redirect", "_spf.example.net")),
    ("exp=", Modifier("exp", "")),
    ("x.y_z-1=%{d}", Modifier("x.y_z-1", "%{d}")),
    ("a:x=y", Mechanism("", "a", ":x=y")),           # a modifier name cannot hold ":"
    ("%{i}", Mechanism("", "", "%{i}")),
])
def test_terms_are_modifiers_or_mechanisms(term, parsed):
    """s. 4.6.1: modifier = name "=" ...; directive = [qualifier] mechanism."""
    assert parse_term(term) == parsed


@pytest.mark.parametrize("record, qualifier", [
    ("v=spf1 mx -all", "-"), ("v=spf1 all", "+"), ("v=spf1 ?all ~all", "?"),
    ("v=spf1 mx ~all", "~"), ("v=spf1 mx", None), ("v=spf1 all=1 alls", None),
    ("v=spf1 redirect=_spf.example.net", None),
])
def test_final_all(record, qualifier):
    """s. 5.1: the first all ends evaluation; no qualifier means "+" (s. 4.6.2)."""
    assert final_all(record) == qualifier


@pytest.mark.parametrize("term, target", [
    ("a", (None, "")), ("a/24", (None, "/24")), ("a//64", (None, "//64")),
    ("mx:example.com/24//64", ("example.com", "/24//64")), ("a:", ("", "")),
    ("ptr", (None, "")), ("ptr:example.com", ("example.com", "")),
    ("include:_spf.example.net", ("_spf.example.net", "")), ("exists:%{i}.x.example.com",
                                                            ("%{i}.x.example.com", "")),
    ("include", None), ("exists", None), ("ptr/24", None), ("include:x/24", ("x/24", "")),
    ("a.example.com", None), ("mx-1", None),
])
def test_domain_target(term, target):
    """s. 5.2-5.5, 5.7: include/exists need ":domain-spec"; a/mx take a dual-cidr-length."""
    mechanism = parse_term(term)
    assert isinstance(mechanism, Mechanism)
    assert domain_target(mechanism) == target


@pytest.mark.parametrize("spec, ok", [
    ("example.com", True), ("_spf.example.com.", True), ("%{i}._spf.example.com", True),
    ("%{ir}.%{v}._spf.%{d2}", True), ("%{l1r-}.example.com", True), ("x.%%.example.com", True),
    ("%_%-.example.com", True), ("a-b.c0m", True), ("example.x-1", True),
    ("", False), ("example", False), ("%{q}.example.com", False), ("50%.example.com", False),
    ("example.123", False), ("ex ample.com", False), ("ex\u00e9mple.com", False),
    ("example.-com", False), ("example.com-", False),
])
def test_domain_spec_syntax(spec, ok):
    """s. 7.1: macro-string domain-end; the top label must not be all digits."""
    assert (domain_spec_problem(spec) is None) is ok


def test_macros_are_recognised():
    assert has_macro("%{i}.x.example.com") and has_macro("a%%b") and has_macro("%{d2r}")
    assert not has_macro("example.com") and not has_macro("%{q}")


@pytest.mark.parametrize("kind, rest, problem", [
    ("ip4", ":192.0.2.1", None), ("ip4", ":192.0.2.0/24", None), ("ip4", ":0.0.0.0/0", None),
    ("ip6", ":2001:db8::/32", None), ("ip6", ":::1/128", None),
    ("ip4", "", "ip4 needs :ADDRESS"), ("ip4", ":300.1.1.1", "'300.1.1.1' is not an IP address"),
    ("ip4", ":2001:db8::1", "2001:db8::1 is not an IPv4 address"),
    ("ip6", ":192.0.2.1", "192.0.2.1 is not an IPv6 address"),
    ("ip4", ":192.0.2.0/33", "/33 is not a valid prefix length"),
    ("ip4", ":192.0.2.0/024", "/024 is not a valid prefix length"),
    ("ip6", ":2001:db8::/129", "/129 is not a valid prefix length"),
])
def test_ip_terms(kind, rest, problem):
    """s. 5.6: an address of the mechanism's family, a prefix length without leading zeros."""
    assert ip_problem(kind, rest) == problem


@pytest.mark.parametrize("cidr, ok", [
    ("", True), ("/0", True), ("/32", True), ("//128", True), ("/24//64", True),
    ("/33", False), ("//129", False), ("/24/64", False), ("/x", False),
])
def test_dual_cidr_length(cidr, ok):
    """s. 5.6 dual-cidr-length."""
    assert (cidr_problem(cidr) is None) is ok


def test_prefix_lengths_in_other_digits_or_too_long_are_problems_not_exceptions():
    """Found by tests/unit/test_fuzz_parsers.py: "²" passed str.isdigit() and int() raised
    ValueError, as it does past 4300 digits; "\\d" also matched "١" (ARABIC-INDIC ONE).
    s. 12: prefix lengths are ASCII digits without leading zeros, as pyspf reads them."""
    for rest in (":192.0.2.1/²", ":192.0.2.1/" + "9" * 5000, ":192.0.2.1/١"):
        assert ip_problem("ip4", rest).endswith("is not a valid prefix length")
    for cidr in ("/" + "9" * 5000, "//" + "1" * 5000, "/١", "//١٢", "/024", "//0064", "/²"):
        assert cidr_problem(cidr) == f"bad prefix length {cidr!r}"
    for cidr in ("", "/0", "/32", "//0", "//128", "/24//64"):
        assert cidr_problem(cidr) is None


def test_a_long_last_label_is_judged_in_linear_time():
    """Found by tests/unit/test_fuzz_parsers.py: the toplabel regex backtracked quadratically
    on a long label that fails at its end (20 KB after include: took 12 s, 30 KB 47 s)."""
    import time
    start = time.perf_counter()
    for spec in ("e6.exa" + "m" * 30_000 + "-", "e4." + "exam" * 8_000 + "_", "x." + "9" * 30_000):
        assert "does not end in a domain name" in domain_spec_problem(spec)
    assert time.perf_counter() - start < 0.1
    for good in ("example.com", "example.x-1", "example.1-x", "ex.a" + "b" * 62, "a.b.c."):
        assert domain_spec_problem(good) is None, good
    for bad in ("example.123", "example.-x", "example.x-", "example.é", "example."):
        assert domain_spec_problem(bad) is not None, bad
