"""The milter session table and the end-of-message translation, with plain calls.

The ordering rules are checked twice: a model of Postfix's cleanup header edits is first held
against what Postfix 3.7.11 did to the probe messages (postfix-probe-results.txt), then the
packets made from pipeline dispositions of the captured message are applied to that model.
"""
from __future__ import annotations

import asyncio
import struct
from typing import Sequence

import pytest

from authfilter.config import from_dict
from authfilter.dns import StaticResolver
from authfilter.message import Message, remove_from_head, render_fields
from authfilter.milter.codec import (ACCEPT, REJECT, SMFIF_ADDHDRS, SMFIF_CHGHDRS,
                                     SMFIF_QUARANTINE, SMFIF_SETSYMLIST, SMFIM_ENVFROM,
                                     SMFIP_HDR_LEADSPC, SMFIP_NOBODY, SMFIP_NOCONNECT,
                                     SMFIP_NODATA, SMFIP_NOEOH, SMFIP_NOHDRS, SMFIP_NR_BODY,
                                     SMFIP_NR_CONN, SMFIP_NR_DATA, SMFIP_NR_EOH, SMFIP_NR_HDR,
                                     SMFIP_NR_HELO, SMFIP_NR_MAIL, SMFIP_NR_RCPT, SMFIP_NR_UNKN,
                                     TEMPFAIL, Abort, Body, Connect, Data, Decoder, EndOfHeaders,
                                     EndOfMessage, Header, Helo, Macro, MailFrom, OptNeg, Quit,
                                     QuitNewConnection, RcptTo, Unknown, add_header,
                                     change_header, insert_header, optneg_reply, quarantine,
                                     reply_code)
from authfilter.milter.state import (MilterSession, MilterState, NegotiationFailed,
                                     ProtocolViolation, end_of_message_replies, header_edits,
                                     rebuild_header_block)
from authfilter.pipeline import Disposition, Pipeline, SessionFacts
from authfilter.policy import Action
from authfilter.results import SmtpReply
from authfilter.runtime import Runtime
from tests.conftest import testdata as conformance_file
from tests.unit.test_milter_codec import CAPTURED_HEADERS, capture_stream, postfix_accepts_reply

S = MilterState
POSTFIX_OFFER = OptNeg(6, 0x1FF, 0x1FFFFF)                   # captured from Postfix 3.7.11
ACTIONS = SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE
NO_REPLIES = (SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT | SMFIP_NR_DATA
              | SMFIP_NR_UNKN | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY)


def session(protocol: int = SMFIP_HDR_LEADSPC, **kwargs) -> MilterSession:
    return MilterSession(actions=ACTIONS, protocol=protocol, **kwargs)


def run(events, protocol: int = SMFIP_HDR_LEADSPC) -> tuple[MilterSession, list[MilterState]]:
    s = session(protocol)
    return s, [s.receive(e) for e in events]


CONNECTED = [POSTFIX_OFFER, Connect(b"mx", b"4", 25, b"192.0.2.1"), Helo(b"client.example")]


def message_events(queue_id: bytes, subject: bytes) -> list:
    i = {b"i": queue_id}
    return [Macro(b"M", {b"{mail_addr}": b"a@example.org"}), MailFrom([b"<a@example.org>"]),
            RcptTo([b"<b@example.net>"]), Macro(b"T", i), Data(),
            Macro(b"L", i), Header(b"Subject", subject), Macro(b"N", i), EndOfHeaders(),
            Macro(b"B", i), Body(b"hi\r\n"), Macro(b"E", i), EndOfMessage()]


# -- the captured stream --------------------------------------------------------------------
def test_the_captured_stream_replays_without_a_violation():
    s = session(SMFIP_HDR_LEADSPC | NO_REPLIES, macro_lists={SMFIM_ENVFROM: [b"{auth_authen}"]})
    states, replies, headers = [], [], []
    for event in Decoder().feed(capture_stream()):
        states.append(s.receive(event))
        replies += [type(event).__name__] if s.needs_reply(event) else []
        headers += [event] if isinstance(event, Header) else []
        if isinstance(event, MailFrom):
            assert s.macro(b"{mail_addr}") == b"alice@example.org" and s.macro(b"i") is None
        if isinstance(event, EndOfMessage):
            assert s.macro(b"i") == s.macro(b"{i}") == b"125EF2324F2"
            assert s.macro(b"daemon_name") == b"mx.probe.example"
    assert states[:3] == [S.CONNECT, S.CONNECT, S.SESSION]
    assert states[-4:] == [S.END_OF_MESSAGE, S.SESSION, S.SESSION, S.CLOSED]
    assert replies == ["OptNeg", "EndOfMessage"]                 # NR on every other stage
    assert s.negotiated.actions == ACTIONS | SMFIF_SETSYMLIST
    assert s.negotiated.reply == optneg_reply(6, ACTIONS | SMFIF_SETSYMLIST,
                                              SMFIP_HDR_LEADSPC | NO_REPLIES,
                                              {SMFIM_ENVFROM: [b"{auth_authen}"]})
    assert headers == CAPTURED_HEADERS
    assert s.macro(b"i") is None                                 # the ABORTs forgot it


CAPTURED_BLOCK = (b"Authentication-Results: mx.probe.example; dkim=pass (forged 1)\r\n"
                  b"From: Alice <alice@example.org>\r\n"
                  b"To: bob@dest.example\r\n"
                  b"Authentication-Results: mx.probe.example; spf=pass (forged 2)\r\n"
                  b"Subject: fwddel caf\xc3\xa9\r\n"
                  b"X-Folded: first part\r\n\tsecond part\r\n"
                  b"X-NoSpace:nospace\r\n"
                  b"Message-ID: <p1@example.org>\r\n"
                  b"Date: Wed,  2 Dec 2026 04:36:25 +0000 (UTC)\r\n"
                  b"\r\n")


def test_the_header_block_is_rebuilt_byte_for_byte():
    block = rebuild_header_block(CAPTURED_HEADERS)
    assert block == CAPTURED_BLOCK
    parsed = Message.parse(block + b"body\r\n", crlf_only=True)
    assert [n for n, _ in parsed.headers] == [h.name for h in CAPTURED_HEADERS]
    assert parsed.count(b"authentication-results") == 2 and parsed.errors == []
    assert rebuild_header_block([]) == b"\r\n"
    eaten = [Header(b"Subject", b"x"), Header(b"X-Folded", b"a\n\tb")]    # no LEADSPC
    assert rebuild_header_block(eaten, leading_space=False) == (
        b"Subject: x\r\nX-Folded: a\r\n\tb\r\n\r\n")


# -- transitions ----------------------------------------------------------------------------
def test_abort_between_two_messages_on_one_connection():
    events = (CONNECTED + message_events(b"Q1", b" one") + [Abort()]
              + message_events(b"Q2", b" two") + [Abort(), Quit()])
    s = session()
    seen_ids = []
    for event in events:
        s.receive(event)
        if isinstance(event, (MailFrom, Data, EndOfMessage)):
            seen_ids.append(s.macro(b"i"))
    assert seen_ids == [None, b"Q1", b"Q1", None, b"Q2", b"Q2"]   # no id leaks into message 2
    assert s.state is S.CLOSED


def test_the_states_of_one_message():
    _, states = run(CONNECTED + message_events(b"Q1", b" x"))
    assert states == [S.CONNECT, S.SESSION, S.SESSION, S.SESSION, S.MAIL, S.RCPT, S.RCPT,
                      S.DATA, S.DATA, S.HEADERS, S.HEADERS, S.END_OF_HEADERS,
                      S.END_OF_HEADERS, S.BODY, S.BODY, S.END_OF_MESSAGE]
    assert [st.in_transaction for st in (S.SESSION, S.MAIL, S.BODY, S.END_OF_MESSAGE)] == [
        False, True, True, False]


@pytest.mark.parametrize(("events", "final"), [
    ([Helo(b"again"), Helo(b"again")], S.SESSION),                        # EHLO after STARTTLS
    ([MailFrom([b"<a>"]), RcptTo([b"<b>"]), Helo(b"x"), Abort()], S.SESSION),  # HELO resets
    ([MailFrom([b"<a>"]), Unknown(b"XYZZY"), RcptTo([b"<b>"]), Unknown(b"FOO")], S.RCPT),
    ([MailFrom([b"<a>"]), RcptTo([b"<b>"]), Data(), EndOfHeaders(), EndOfMessage(),
      MailFrom([b"<c>"])], S.MAIL),                                       # Sendmail: no ABORT
    ([MailFrom([b"<a>"]), RcptTo([b"<b>"]), Data(), Header(b"X", b" y"), Abort()], S.SESSION),
    ([MailFrom([b"<a>"]), Quit()], S.CLOSED),
    ([Abort(), Abort()], S.SESSION),
])
def test_legal_sequences(events, final):
    _, states = run(CONNECTED + events)
    assert states[-1] is final


def test_quit_new_connection_starts_a_new_session():
    s, _ = run(CONNECTED + message_events(b"Q1", b" x"))
    assert s.receive(QuitNewConnection()) is S.CONNECT and s.macro(b"i") is None
    s.receive(Macro(b"C", {b"j": b"mx"}))
    assert s.receive(Connect(b"other", b"6", 1, b"2001:db8::2")) is S.SESSION
    assert s.macro(b"j") == b"mx"


@pytest.mark.parametrize(("events", "bad", "state"), [
    ([], Connect(b"h", b"U", None, None), S.OPTNEG),
    ([], Macro(b"C", {}), S.OPTNEG),
    ([POSTFIX_OFFER], POSTFIX_OFFER, S.CONNECT),
    ([POSTFIX_OFFER], MailFrom([b"<a>"]), S.CONNECT),
    ([POSTFIX_OFFER], Abort(), S.CONNECT),
    (CONNECTED, Connect(b"h", b"U", None, None), S.SESSION),
    (CONNECTED, RcptTo([b"<b>"]), S.SESSION),
    (CONNECTED, Header(b"X", b" y"), S.SESSION),
    (CONNECTED + [MailFrom([b"<a>"])], Data(), S.MAIL),
    (CONNECTED + [MailFrom([b"<a>"])], MailFrom([b"<a>"]), S.MAIL),
    (CONNECTED + [MailFrom([b"<a>"]), RcptTo([b"<b>"])], Header(b"X", b" y"), S.RCPT),
    (CONNECTED + [MailFrom([b"<a>"]), RcptTo([b"<b>"]), Data()], Body(b"x"), S.DATA),
    (CONNECTED + [MailFrom([b"<a>"]), RcptTo([b"<b>"]), Data(), Header(b"X", b" y")],
     EndOfMessage(), S.HEADERS),
    (CONNECTED + [MailFrom([b"<a>"]), RcptTo([b"<b>"]), Data(), EndOfHeaders(), Body(b"x")],
     Header(b"X", b" y"), S.BODY),
    (CONNECTED + [MailFrom([b"<a>"]), RcptTo([b"<b>"]), Data(), EndOfHeaders()],
     Helo(b"x"), S.END_OF_HEADERS),
    (CONNECTED + [Quit()], Abort(), S.CLOSED),
])
def test_violations_are_named(events, bad, state):
    s, _ = run(events)
    with pytest.raises(ProtocolViolation) as raised:
        s.receive(bad)
    assert (raised.value.state, raised.value.event) == (state, bad)
    assert str(raised.value) == f"{type(bad).__name__} {state.value}"
    assert s.state is state                                 # nothing changed


def test_steps_negotiated_away_may_be_passed_over():
    skipping = SMFIP_NOCONNECT | SMFIP_NODATA | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOBODY
    _, states = run([POSTFIX_OFFER, Helo(b"x"), MailFrom([b"<a>"]), RcptTo([b"<b>"]),
                     EndOfMessage()], protocol=skipping)
    assert states == [S.CONNECT, S.SESSION, S.MAIL, S.RCPT, S.END_OF_MESSAGE]
    _, states = run(CONNECTED + [MailFrom([b"<a>"]), RcptTo([b"<b>"]), Header(b"X", b" y")],
                    protocol=SMFIP_NODATA)
    assert states[-1] is S.HEADERS
    s, _ = run(CONNECTED + [MailFrom([b"<a>"]), RcptTo([b"<b>"])])     # DATA not negotiated away
    with pytest.raises(ProtocolViolation):
        s.receive(Header(b"X", b" y"))


# -- negotiation and replies due ------------------------------------------------------------
def test_negotiation_takes_what_the_mta_offers():
    s = session(SMFIP_HDR_LEADSPC | SMFIP_NR_HDR)
    s.receive(OptNeg(6, 0x1FF, SMFIP_NR_HDR))                # an MTA without LEADSPC
    assert s.negotiated.protocol == SMFIP_NR_HDR and not s.negotiated.leading_space
    assert s.negotiated.reply == optneg_reply(6, ACTIONS, SMFIP_NR_HDR)
    with pytest.raises(NegotiationFailed, match="protocol 2, 6 is needed"):
        session().receive(OptNeg(2, 0x1FF, 0x1FFFFF))
    with pytest.raises(NegotiationFailed, match="actions 0x20"):
        session().receive(OptNeg(6, 0x1F, 0x1FFFFF))       # no SMFIF_QUARANTINE
    with pytest.raises(NegotiationFailed, match="actions 0x100"):   # lists need SETSYMLIST
        session(macro_lists={SMFIM_ENVFROM: [b"i"]}).receive(OptNeg(6, 0xFF, 0x1FFFFF))


def test_which_events_wait_for_a_reply():
    every = [POSTFIX_OFFER, Macro(b"C", {}), Connect(b"h", b"U", None, None), Helo(b"h"),
             Unknown(b"X"), MailFrom([b"<a>"]), RcptTo([b"<b>"]), Data(), Header(b"X", b" y"),
             EndOfHeaders(), Body(b"x"), EndOfMessage(), Abort(), Quit()]
    answered = {"OptNeg", "Connect", "Helo", "Unknown", "MailFrom", "RcptTo", "Data", "Header",
                "EndOfHeaders", "Body", "EndOfMessage"}
    for protocol, expected in ((SMFIP_HDR_LEADSPC, answered),
                               (NO_REPLIES, {"OptNeg", "EndOfMessage"}),
                               (SMFIP_NR_HDR | SMFIP_NR_BODY, answered - {"Header", "Body"})):
        s = session(protocol)
        assert s.needs_reply(POSTFIX_OFFER) and not s.needs_reply(Connect(b"h", b"U", None, None))
        s.receive(POSTFIX_OFFER)
        assert {type(e).__name__ for e in every if s.needs_reply(e)} == expected


# -- Postfix's header edits, as a model held against the probes -----------------------------
def header_edit(packet: bytes) -> tuple[bytes, int, bytes, bytes]:
    """(command, index, name, value) of an SMFIR_INSHEADER, _CHGHEADER or _ADDHEADER packet;
    (command, 0, b"", b"") of any other reply."""
    command, data, index = packet[4:5], packet[5:], 0
    if command in (b"i", b"m"):
        (index,), data = struct.unpack("!I", data[:4]), data[4:]
    elif command != b"h":
        return command, 0, b"", b""
    name, value, _ = data.split(b"\0")
    return command, index, name, value


class PostfixHeader:
    """A message's header in Postfix's cleanup under milter edits (cleanup_milter.c): Postfix's
    own Received: on top, hidden from the milter until a field is inserted above it;
    SMFIR_INSHEADER n inserts before the (n+1)th field, that Received: counted; SMFIR_CHGHEADER
    n is the nth field of that name the milter sees (0 as 1), an empty value deletes it, a
    missing one is added; SMFIR_ADDHEADER appends.  Each edit is applied at once."""

    def __init__(self, seen: Sequence[Header]):
        self.fields = [[b"Received", b" from client.example (Postfix)", True]]
        self.fields += [[h.name, h.value, False] for h in seen]

    def apply(self, packets: Sequence[bytes]) -> "PostfixHeader":
        for command, index, name, value in map(header_edit, packets):
            if command == b"i":
                for field in self.fields[index:]:
                    field[2] = False                    # an insert above Received: unhides it
                self.fields.insert(index, [name, value, False])
            elif command == b"m":
                named = [f for f in self.fields if f[0].lower() == name.lower() and not f[2]]
                if max(index, 1) <= len(named):
                    target = named[max(index, 1) - 1]
                    if value:
                        target[1] = value
                    else:
                        self.fields.remove(target)
                elif value:
                    self.fields.append([name, value, False])
            elif command == b"h":
                self.fields.append([name, value, False])
        return self

    def lines(self, *, with_received: bool = True) -> list[tuple[bytes, bytes | None]]:
        return [(name, None if name == b"Received" else value) for name, value, _ in self.fields
                if with_received or name != b"Received"]


def probe_results() -> dict[str, list[tuple[bytes, bytes | None]]]:
    """The header blocks of postfix-probe-results.txt (postcat -h), per probe, as (name, value
    after the colon); Received: without its value (queue id and date differ)."""
    sections: dict[str, list[tuple[bytes, bytes | None]]] = {}
    fields: list[tuple[bytes, bytes | None]] | None = None
    for line in conformance_file("milter", "postfix-probe-results.txt").read_bytes().split(b"\n"):
        name, colon, value = line.partition(b":")
        if line.startswith(b"== "):
            fields = sections.setdefault(line[3:].split(b" ")[0].decode(), [])
        elif fields is not None and fields and line[:1] in (b" ", b"\t"):
            last_name, last_value = fields[-1]
            fields[-1] = (last_name, None if last_value is None else last_value + b"\n" + line)
        elif fields is not None and colon and name and b" " not in name:
            fields.append((name, None if name == b"Received" else value))
        else:
            fields = None                               # a log line: the section is over
    return sections


def probe_message(subject: bytes, date: bytes) -> list[Header]:
    """The captured message's header with another Subject: and Date:, as the first probe had."""
    changed = {b"Subject": subject, b"Date": date}
    return [Header(h.name, changed.get(h.name, h.value)) for h in CAPTURED_HEADERS]


AR = b"Authentication-Results"


def test_the_model_does_what_postfix_did_to_the_probes():
    probes = probe_results()
    reverse = PostfixHeader(probe_message(" probe café".encode(),
                                          b" Wed,  2 Dec 2026 04:36:06 +0000 (UTC)")).apply([
        change_header(2, AR), change_header(1, AR),
        insert_header(0, b"X-Probe-Ins0", b" at index 0"),
        insert_header(1, b"X-Probe-Ins1", b" at index 1"),
        add_header(b"X-Probe-Add", b" appended\n\tfolded second line")])
    assert reverse.lines() == probes["probe"]
    forward = PostfixHeader(CAPTURED_HEADERS).apply([
        change_header(1, AR), change_header(2, AR),
        insert_header(1, b"X-Probe-Ins1", b" at index 1 only")])
    assert forward.lines() == probes["fwddel"]          # one forged field survives
    twice = PostfixHeader(CAPTURED_HEADERS).apply([
        insert_header(0, b"X-First-Sent", b" first at 0"),
        insert_header(0, b"X-Second-Sent", b" second at 0")])
    assert twice.lines()[:3] == probes["twoins0"]       # the capture stops after Received:


# -- Disposition -> packets -----------------------------------------------------------------
def test_deletions_highest_first_then_insertions_in_reverse():
    prepend = [("Authentication-Results", "mx.probe.example; spf=pass"),
               ("ARC-Seal", "i=1; cv=none;\r\n\tb=abc"), ("X-Authfilter-Quarantine", "dmarc")]
    edits = header_edits([("Authentication-Results", 1), ("Authentication-Results", 2),
                          ("authentication-results", 2)], prepend, CAPTURED_HEADERS,
                         leading_space=True)
    assert edits == [change_header(2, AR), change_header(1, AR),
                     insert_header(0, b"X-Authfilter-Quarantine", b" dmarc"),
                     insert_header(0, b"ARC-Seal", b" i=1; cv=none;\n\tb=abc"),
                     insert_header(0, AR, b" mx.probe.example; spf=pass")]
    result = PostfixHeader(CAPTURED_HEADERS).apply(edits).lines()
    assert result[:4] == [(AR, b" mx.probe.example; spf=pass"),
                          (b"ARC-Seal", b" i=1; cv=none;\n\tb=abc"),
                          (b"X-Authfilter-Quarantine", b" dmarc"), (b"Received", None)]
    assert AR not in [name for name, _ in result[1:]]
    assert header_edits([], prepend[:1], [], leading_space=False) == [
        insert_header(0, AR, b"mx.probe.example; spf=pass")]      # Postfix adds the space
    with pytest.raises(ValueError, match="no Authentication-Results field #3 among the 2"):
        header_edits([("Authentication-Results", 3)], [], CAPTURED_HEADERS, leading_space=True)


def disposition(action: str, reply: SmtpReply | None = None, reason: str = "policy",
                **kwargs) -> Disposition:
    return Disposition(action, reply, kwargs.get("remove", ()), kwargs.get("prepend", ()),
                       None, Action(action, reason, reply), Message.parse(b""))


def test_refusals_are_one_reply_without_edits():
    reject = SmtpReply(550, "5.7.26 Unauthenticated email from example.org is not accepted")
    assert end_of_message_replies(disposition("reject", reject, remove=(("To", 1),)),
                                  CAPTURED_HEADERS, leading_space=True) == [
        reply_code(550, reject.text)]
    assert end_of_message_replies(disposition("reject"), [], leading_space=True) == [REJECT]
    assert end_of_message_replies(disposition("tempfail"), [], leading_space=True) == [TEMPFAIL]
    tempfail = SmtpReply(451, "4.3.0 Temporary failure checking the message, try again later")
    assert end_of_message_replies(disposition("tempfail", tempfail), [], leading_space=True) == [
        reply_code(451, tempfail.text)]
    with pytest.raises(ValueError, match="reject with reply code 451"):
        end_of_message_replies(disposition("reject", tempfail), [], leading_space=True)
    with pytest.raises(ValueError, match="unknown action"):
        end_of_message_replies(disposition("discard"), [], leading_space=True)


AUTHSERV = "mx.probe.example"
CLIENT, OTHER = "192.0.2.10", "198.51.100.7"


def pipeline_disposition(dmarc: str, client: str) -> Disposition:
    """The real pipeline's disposition of the captured message (SPF passes from CLIENT only)."""
    records = {("example.org", "TXT"): [f"v=spf1 ip4:{CLIENT} -all"],
               ("_dmarc.example.org", "TXT"): [dmarc]}
    config = from_dict({"general": {"authserv_id": AUTHSERV}})
    pipeline = Pipeline(Runtime.build(config, StaticResolver(records)))
    raw = rebuild_header_block(CAPTURED_HEADERS) + b"body line 1\r\n.dot line\r\n"

    async def finish() -> Disposition:
        tx = pipeline.begin(SessionFacts(client_ip=client, helo="client.example",
                                         mail_from="alice@example.org",
                                         recipients=["bob@dest.example"], role="inbound"))
        d = await tx.finish(raw, crlf_only=True)
        await tx.done(None)
        return d
    return asyncio.run(finish())


def test_an_accepted_message_gets_the_headers_the_proxy_would_give_it():
    d = pipeline_disposition("v=DMARC1; p=reject", CLIENT)
    assert d.action == "accept" and d.remove == (("Authentication-Results", 2),
                                                 ("Authentication-Results", 1))
    packets = end_of_message_replies(d, CAPTURED_HEADERS, leading_space=True)
    assert [p[4:5] for p in packets] == [b"m", b"m", b"i", b"a"] and packets[-1] == ACCEPT
    milter = PostfixHeader(CAPTURED_HEADERS).apply(packets)
    proxy = Message.parse(render_fields(d.prepend) + remove_from_head(CAPTURED_BLOCK, d.remove))
    assert milter.lines(with_received=False) == [
        (name, value[:-2].replace(b"\r\n", b"\n")) for name, value in proxy.headers]
    assert milter.lines()[1] == (b"Received", None)    # our A-R above Postfix's Received:


def test_a_quarantined_message_is_held_and_marked():
    d = pipeline_disposition("v=DMARC1; p=quarantine", OTHER)
    assert d.action == "quarantine"
    packets = end_of_message_replies(d, CAPTURED_HEADERS, leading_space=True)
    assert [p[4:5] for p in packets] == [b"m", b"m", b"i", b"i", b"q", b"a"]
    assert packets[4] == quarantine(d.decision.reason.encode())
    top = PostfixHeader(CAPTURED_HEADERS).apply(packets).lines()[:3]
    assert [name for name, _ in top] == [AR, b"X-Authfilter-Quarantine", b"Received"]


def test_a_rejected_message_gets_the_policy_reply():
    d = pipeline_disposition("v=DMARC1; p=reject", OTHER)
    [packet] = end_of_message_replies(d, CAPTURED_HEADERS, leading_space=True)
    assert packet == reply_code(d.reply.code, d.reply.text)
    assert packet[5:].startswith(b"550 5.7.26 ") and postfix_accepts_reply(packet[5:])
