"""Our Authentication-Results header: well formed (parsed back with the authres package),
complete, and forged copies claiming our authserv-id removed."""
import authres
import authres.arc
import authres.dmarc
import pytest

from authfilter.authres import authserv_id_of, build_header, header_value, strip_our_headers
from authfilter.results import ArcResult, DkimResult, DmarcResult, SessionFacts, SpfResult, Verdict

FACTS = SessionFacts.create("192.0.2.10", helo="mail.example.org", mail_from="alice@example.org")


def verdict(**over):
    base = dict(
        spf=SpfResult("pass", "mailfrom", "example.org", "alice@example.org"),
        dkim=(DkimResult("pass", "example.org", "s1", "rsa-sha256", "@example.org", "AbCdEfGh", 2048),
              DkimResult("fail", "list.example", "k", "ed25519-sha256", reason="body hash mismatch (l=) \\ x")),
        arc=ArcResult("pass", 2, ("a.example", "b.example"), 1, "b.example"),
        dmarc=DmarcResult("pass", "example.org", "example.org", "example.org", "reject", "none",
                          True, True),
    )
    base.update(over)
    return Verdict(**base)


def parse(header: str):
    ctx = authres.FeatureContext(authres.dmarc, authres.arc)
    return ctx.parse(header.replace("\r\n", ""))


def test_header_parses_back_with_every_result():
    h = build_header("mx.example.net", FACTS, verdict())
    assert h.startswith("Authentication-Results: mx.example.net;\r\n\t") and h.endswith("\r\n")
    assert all(len(line) < 998 for line in h.split("\r\n"))
    parsed = parse(h)
    assert parsed.authserv_id == "mx.example.net"
    got = [(r.method, r.result) for r in parsed.results]
    assert got == [("spf", "pass"), ("dkim", "pass"), ("dkim", "fail"), ("arc", "pass"), ("dmarc", "pass")]
    props = {(p.type, p.name): p.value for p in parsed.results[1].properties}
    assert props[("header", "d")] == "example.org" and props[("header", "b")] == "AbCdEfGh"
    assert props[("header", "s")] == "s1" and props[("header", "a")] == "rsa-sha256"
    assert {(p.type, p.name): p.value for p in parsed.results[0].properties}[("smtp", "mailfrom")] \
        == "alice@example.org"


def test_unsigned_message_and_null_sender():
    v = verdict(dkim=(), spf=SpfResult("none", "helo", "mail.example.org", "postmaster@mail.example.org"),
                arc=ArcResult("none"),
                dmarc=DmarcResult("none", "example.org"))
    value = header_value("mx", FACTS, v)
    assert "dkim=none" in value and "smtp.helo=mail.example.org" in value and "arc=none" in value
    assert [r.method for r in parse("Authentication-Results: " + value).results] == \
        ["spf", "dkim", "arc", "dmarc"]


def test_dmarc_failure_carries_policy_and_disposition():
    v = verdict(dmarc=DmarcResult("fail", "example.org", "example.org", "example.org", "reject",
                                  "reject", reason="no aligned identifier"))
    value = header_value("mx", FACTS, v)
    assert value.endswith("dmarc=fail (p=reject dis=REJECT; no aligned identifier) header.from=example.org")
    # one "dmarc=" token only: scripts that grep for it must see one result word
    assert value.count("dmarc=") == 1


def test_comments_cannot_break_the_header():
    v = verdict(spf=SpfResult("permerror", "mailfrom", "example.org", reason="bad (record)\r\nX-Evil: 1 " + "x" * 500))
    h = build_header("mx", FACTS, v)
    assert "\r\nX-Evil" not in h and "\\(record\\)" in h
    parse(h)


@pytest.mark.parametrize("value,ident", [
    (b" mx.example.net; spf=pass", "mx.example.net"),
    (b" MX.Example.NET 1; none", "mx.example.net"),
    (b"\r\n (c (nested)) mx.example.net;", "mx.example.net"),
    (b' "mx.example.net"; none', "mx.example.net"),
    (b";", None),
])
def test_authserv_id_of(value, ident):
    assert authserv_id_of(value) == ident


def test_strip_removes_only_ours():
    raw = (b"Received: x\r\nAuthentication-Results: mx.example.net; dmarc=pass\r\n"
           b"Authentication-Results:\r\n (forged) MX.EXAMPLE.NET;\r\n dkim=pass\r\n"
           b"Authentication-Results: mx.example.net.evil; spf=pass\r\n"
           b"ARC-Authentication-Results: i=1; mx.example.net; spf=pass\r\n"
           b"Subject: hi\r\n\r\nAuthentication-Results: mx.example.net; body stays\r\n")
    out = strip_our_headers(raw, "mx.example.net")
    assert out == (b"Received: x\r\nAuthentication-Results: mx.example.net.evil; spf=pass\r\n"
                   b"ARC-Authentication-Results: i=1; mx.example.net; spf=pass\r\n"
                   b"Subject: hi\r\n\r\nAuthentication-Results: mx.example.net; body stays\r\n")


def test_strip_leaves_other_messages_untouched():
    raw = b"From: a@b\r\nSubject: x\r\n\r\nbody\r\n"
    assert strip_our_headers(raw, "mx") is raw


def unfold(header: str) -> str:
    return header.replace("\r\n", "")


def test_lines_stay_within_78_columns_where_a_space_allows_and_unfold_to_the_same_header():
    """RFC 5322 s. 2.1.1: 78 SHOULD, 998 MUST; folding only before existing spaces, so the
    unfolded header is the one-result-per-line layout without the line breaks."""
    h = build_header("mx.example.net", FACTS, verdict())
    lines = h.removesuffix("\r\n").split("\r\n")
    assert all(len(line) <= 78 for line in lines), [line for line in lines if len(line) > 78]
    assert all(line.startswith((" ", "\t")) for line in lines[1:])
    assert unfold(h) == "Authentication-Results: " + header_value("mx.example.net", FACTS,
                                                                  verdict()).replace("; ", ";\t")
    assert [r.method for r in parse(h).results] == ["spf", "dkim", "dkim", "arc", "dmarc"]


def test_a_very_long_mail_from_never_makes_a_line_over_998():
    """A 1,900-character MAIL FROM gave a 1,979-character line: the address is given by its
    domain instead (what SPF checked)."""
    sender = "x" * 1890 + "@example.org"
    facts = SessionFacts.create("192.0.2.10", mail_from=sender)
    v = verdict(spf=SpfResult("pass", "mailfrom", "example.org", sender))
    h = build_header("mx.example.net", facts, v)
    assert max(len(line) for line in h.split("\r\n")) <= 998
    props = {(p.type, p.name): p.value for p in parse(h).results[0].properties}
    assert props[("smtp", "mailfrom")] == "example.org"
