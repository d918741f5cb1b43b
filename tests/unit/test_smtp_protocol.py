"""SMTP grammar without I/O: paths and parameters, xtext, XFORWARD, replies."""
from __future__ import annotations

import ipaddress

import pytest

from authfilter.logline import queue_id_of
from authfilter.results import SmtpReply
from authfilter.smtp import protocol as p


def mail(arg: bytes) -> p.PathArgument:
    return p.parse_path_argument(arg, "FROM:", allowed=p.MAIL_PARAMETERS, null_allowed=True)


def rcpt(arg: bytes) -> p.PathArgument:
    return p.parse_path_argument(arg, "TO:", allowed=p.RCPT_PARAMETERS, null_allowed=False)


def refusal(fn, arg: bytes) -> bytes:
    with pytest.raises(p.SyntaxProblem) as problem:
        fn(arg)
    return problem.value.reply


# -- paths and parameters (RFC 5321 s. 4.1.2, 4.1.1.11) -------------------------------------
def test_plain_path_and_parameters():
    path = mail(b"FROM:<a@example.org> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x+2By AUTH=<>")
    assert path.address == "a@example.org"
    assert path.params == (("SIZE", "1000"), ("BODY", "8BITMIME"), ("SMTPUTF8", None),
                           ("RET", "HDRS"), ("ENVID", "x+2By"), ("AUTH", "<>"))
    assert path.param("SIZE") == "1000" and path.param("SMTPUTF8") == "" and path.param("RET") == "HDRS"


def test_null_reverse_path_case_and_space_after_colon():
    assert mail(b"from: <>").address == ""
    assert mail(b"FROM:<>").params == ()


def test_quoted_local_part_may_contain_angle_bracket_and_spaces():
    assert mail(b'FROM:<"odd > local part"@example.org> SIZE=1').address == '"odd > local part"@example.org'
    assert mail(b'FROM:<"quoted \\" pair"@example.org>').address == '"quoted \\" pair"@example.org'


def test_source_route_is_ignored():
    assert rcpt(b"TO:<@relay.example,@b.example:user@example.net>").address == "user@example.net"


def test_address_without_brackets_is_tolerated_like_postfix():
    assert mail(b"FROM:a@example.org SIZE=5").address == "a@example.org"


def test_utf8_address():
    assert mail("FROM:<jösé@bücher.example> SMTPUTF8".encode()).address == "jösé@bücher.example"


def test_rcpt_parameters():
    path = rcpt(b"TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2B1@example.net")
    assert path.params == (("NOTIFY", "SUCCESS,FAILURE"), ("ORCPT", "rfc822;b+2B1@example.net"))


@pytest.mark.parametrize("arg, code", [
    (b"FROM:<a@example.org> FROB=1", b"555 5.5.4"),          # not recognized
    (b"FROM:<a@example.org> NOTIFY=NEVER", b"555 5.5.4"),    # an RCPT parameter on MAIL
    (b"FROM:<a@example.org> SIZE=x", b"501 5.5.4"),
    (b"FROM:<a@example.org> SIZE=1 SIZE=2", b"501 5.5.4"),
    (b"FROM:<a@example.org> BODY=BINARYMIME", b"501 5.5.4"),  # no CHUNKING, so no BINARYMIME
    (b"FROM:<a@example.org> SMTPUTF8=yes", b"501 5.5.4"),
    (b"FROM:<a@example.org> =x", b"501 5.5.4"),
    (b"FROM:<a@example.org", b"501 5.1.7"),
    (b"FROM:<a@example.org>junk", b"501 5.5.4"),
    (b"TO:<a@example.org>", b"501 5.5.4"),                     # wrong keyword for MAIL
])
def test_bad_mail_arguments(arg, code):
    assert refusal(mail, arg).startswith(code)


def test_rcpt_needs_an_address():
    assert refusal(rcpt, b"TO:<>").startswith(b"501 5.1.3")
    assert refusal(rcpt, b"TO:<@route-only>").startswith(b"501 5.1.7")


def test_split_command():
    assert p.split_command(b"mail FROM:<a@b>") == ("MAIL", b"FROM:<a@b>")
    assert p.split_command(b"QUIT") == ("QUIT", b"")
    assert p.split_command(b"\xffbad x")[0] == ""
    assert p.split_command(b"12AB x")[0] == ""


def test_control_characters_in_commands():
    assert p.has_bad_bytes(b"EHLO a\x00b")
    assert not p.has_bad_bytes("EHLO bücher\texample".encode())


# -- xtext (RFC 3461 s. 4) ------------------------------------------------------------------
@pytest.mark.parametrize("text", ["plain", "a+b=c", "spaces and\ttab", "ünï", ""])
def test_xtext_round_trip(text):
    encoded = p.xtext_encode(text)
    assert all(33 <= ord(c) <= 126 and c != "=" for c in encoded)
    assert p.xtext_decode(encoded) == text


def test_xtext_decode():
    assert p.xtext_decode("a+2Bb+3Dc") == "a+b=c"
    assert p.xtext_decode("a+2bb") == "a+b"                   # lower-case hex tolerated
    for bad in ("a+2", "a+zz", "a b", "a=b"):
        with pytest.raises(ValueError):
            p.xtext_decode(bad)


# -- XFORWARD (Postfix XFORWARD_README) -----------------------------------------------------
def test_xforward_attributes():
    attrs = p.parse_xforward(b"name=mx.example ADDR=IPV6:2001:db8::1 PORT=25 HELO=a+2Bb "
                             b"IDENT=ABC123 SOURCE=REMOTE PROTO=ESMTP")
    assert attrs == {"NAME": "mx.example", "ADDR": "2001:db8::1", "PORT": "25", "HELO": "a+b",
                     "IDENT": "ABC123", "SOURCE": "REMOTE", "PROTO": "ESMTP"}
    assert p.xforward_client_ip(attrs) == ipaddress.ip_address("2001:db8::1")


def test_xforward_unavailable_in_any_case():
    attrs = p.parse_xforward(b"ADDR=[UNAVAILABLE] NAME=[unavailable] HELO=[TEMPUNAVAIL]")
    assert attrs == {"ADDR": None, "NAME": None, "HELO": None}
    assert p.xforward_client_ip(attrs) is None
    assert p.xforward_client_ip({"ADDR": "not-an-ip"}) is None


@pytest.mark.parametrize("arg", [b"", b"COLOR=blue", b"ADDR", b"NAME=" + b"x" * 256,
                                 b"HELO=a+zz", b"HELO=a+20b"])
def test_bad_xforward(arg):
    with pytest.raises(p.SyntaxProblem) as problem:
        p.parse_xforward(arg)
    assert problem.value.reply.startswith(b"501 5.5.4")


def test_format_xforward_only_announced_attributes_and_ipv6_prefix():
    lines = p.format_xforward({"NAME": None, "ADDR": "2001:db8::1", "HELO": "a b", "IDENT": "Q"},
                              frozenset({"NAME", "ADDR", "HELO"}))
    assert lines == [b"XFORWARD NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::1 HELO=a+20b\r\n"]


def test_format_xforward_splits_at_512_bytes():
    attrs = {"NAME": "n" * 250, "HELO": "h" * 250, "ADDR": "192.0.2.1", "PROTO": "ESMTP"}
    lines = p.format_xforward(attrs, frozenset(p.XFORWARD_ATTRIBUTES))
    assert len(lines) == 2 and all(len(line) <= 512 for line in lines)
    parsed = {}
    for line in lines:
        parsed.update(p.parse_xforward(line[9:].rstrip(b"\r\n")))
    assert parsed == attrs


# -- replies (RFC 5321 s. 4.2) --------------------------------------------------------------
def test_reply_formatting():
    assert p.reply(250, "a\nb\nc") == b"250-a\r\n250-b\r\n250 c\r\n"
    assert p.reply(550, "5.7.1 no") == b"550 5.7.1 no\r\n"


def test_reply_lines():
    assert p.parse_reply_line(b"250-PIPELINING\r\n") == (250, True, "PIPELINING")
    assert p.parse_reply_line(b"250 Ok\r\n") == (250, False, "Ok")
    assert p.parse_reply_line(b"354\r\n") == (354, False, "")
    for bad in (b"hello\r\n", b"25 x\r\n", b"999 x\r\n", b"250xOk\r\n"):
        with pytest.raises(p.ReplyError):
            p.parse_reply_line(bad)


def test_queue_id_and_ehlo_keywords():
    assert queue_id_of(SmtpReply(250, "2.0.0 Ok: queued as 4Xyz12AbC")) == "4Xyz12AbC"
    assert queue_id_of(SmtpReply(250, "2.0.0 Ok")) is None
    ehlo = p.Reply(250, ("mx", "PIPELINING", "SIZE 100", "xforward NAME ADDR"))
    assert p.ehlo_keywords(ehlo) == {"PIPELINING": "", "SIZE": "100", "XFORWARD": "NAME ADDR"}
