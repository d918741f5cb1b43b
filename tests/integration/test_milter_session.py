"""The milter front-end end to end in one process: an MTA-side client speaking the protocol as
Postfix 3.7 does (tests/miltermta.py) -> MilterServer over a real unix socket or TCP on
127.0.0.1 -> the pipeline, with every DNS answer from the loopback DNS server.  The client
applies the replies as Postfix's cleanup does, so each test reads the delivered message."""
from __future__ import annotations

import asyncio
import grp
import logging
import os
import socket
import stat
import struct
import threading
import time

import dkim
import pytest

from authfilter.config import Config, SigningKeyConfig
from authfilter.dns import Resolver
from authfilter.metrics import Metrics
from authfilter.message import render_fields
from authfilter.milter.codec import (MAX_PACKET, SMFIA_UNKNOWN, SMFIC_BODY, SMFIC_BODYEOB,
                                     SMFIC_CONNECT, SMFIC_EOH,
                                     SMFIC_HEADER, SMFIC_HELO, SMFIC_MAIL, SMFIC_RCPT,
                                     SMFIR_ACCEPT, SMFIR_CHGHEADER, SMFIR_INSHEADER,
                                     SMFIR_REPLYCODE)
from authfilter.milter.listener import MilterListener, MilterServer, bind_milter_socket
from authfilter.milter.session import MilterLimits
from authfilter.observers import MessageEvent
from authfilter.pipeline import Pipeline, SessionFacts, Transaction
from authfilter.runtime import Runtime
from tests.mailtools import dkim_key, header_fields, message, publish_domain, signed
from tests.miltermta import MilterClient, packet, postfix_view

AUTHSERV = "mx.test"
CLIENT = "127.0.0.1"           # SPF passes from here for every domain publish_domain publishes
MACROS = {b"{daemon_name}": b"mx.test", b"j": b"mx.test", b"v": b"Postfix 3.7.11"}


def milter_config(**policy) -> Config:
    config = Config()
    config.general.authserv_id = AUTHSERV
    config.policy.trusted_networks = []
    for key, value in policy.items():
        setattr(config.policy, key, value)
    return config


class MilterThread:
    """A MilterServer in a loop of its own thread, so blocking clients can talk to it."""

    def __init__(self, config: Config, nameserver: str, listeners: list[MilterListener],
                 **server_settings) -> None:
        self.config = config
        self.nameserver = nameserver
        self.listeners = listeners
        self.server_settings = server_settings
        self.observed: list[MessageEvent] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="milter", daemon=True)
        self._thread.start()
        self.server: MilterServer = self.call(self._start)

    async def _start(self) -> MilterServer:
        server = MilterServer(self.listeners, self.pipeline(self.config), metrics=Metrics(),
                              **self.server_settings)
        await server.start()
        return server

    def pipeline(self, config: Config) -> Pipeline:
        resolver = Resolver([self.nameserver], timeout=0.5, lifetime=1.0)
        return Pipeline(Runtime.build(config, resolver, observers=[self.observed.append]))

    def events(self, count: int) -> list[MessageEvent]:
        """The observed messages once there are ``count`` (the pipeline logs and tells its
        observers after the reply has gone)."""
        deadline = time.monotonic() + 5
        while len(self.observed) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.observed

    @property
    def address(self) -> str:
        return self.server.addresses()[0]

    def call(self, fn):
        """Run ``fn`` (a coroutine function) in the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(20)

    def stop(self) -> None:
        if self.loop.is_running():
            self.call(lambda: self.server.drain(2.0))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()


@pytest.fixture
def start_milter(zone, tmp_path):
    started = []

    def start(config: Config | None = None, *, role: str = "inbound", tcp: bool = False,
              **server_settings) -> MilterThread:
        address = "127.0.0.1:0" if tcp else f"unix:{tmp_path}/milter{len(started)}.sock"
        milter = MilterThread(config or milter_config(), zone.address,
                              [MilterListener(address, role=role)], **server_settings)
        started.append(milter)
        return milter

    yield start
    for milter in started:
        milter.stop()


def session(milter: MilterThread, *, ip: bytes = CLIENT.encode(), helo: bytes = b"client.example",
            macros: dict | None = None) -> MilterClient:
    """A client connection past option negotiation, CONNECT and HELO."""
    client = MilterClient(milter.address, macros={**MACROS, **(macros or {})})
    client.negotiate()
    client.connect(b"localhost", ip)
    client.helo(helo)
    return client


def send(milter: MilterThread, raw: bytes, mail_from: str = "alice@example.org",
         rcpts: tuple[str, ...] = ("bob@example.net",), queue_id: bytes = b"4QID1", **kw):
    with session(milter, **kw) as client:
        outcome = client.message(raw, f"<{mail_from}>".encode(),
                                 [f"<{r}>".encode() for r in rcpts], queue_id)
        client.quit()
    return outcome


def pipeline_says(zone, raw: bytes, mail_from: str = "alice@example.org", *,
                  config: Config | None = None, role: str = "inbound"):
    """The pipeline's own disposition of ``raw`` for the same envelope, without the milter."""
    async def run():
        resolver = Resolver([zone.address], timeout=0.5, lifetime=1.0)
        pipeline = Pipeline(Runtime.build(config or milter_config(), resolver))
        tx = pipeline.begin(SessionFacts(client_ip=CLIENT, helo="client.example",
                                         mail_from=mail_from, recipients=["bob@example.net"],
                                         role=role))
        d = await tx.finish(raw)
        tx.abandon()
        return d
    return asyncio.run(run())


def ours(delivered: bytes) -> list[str]:
    return [v for n, v in header_fields(delivered)
            if n.lower() == "authentication-results" and v.split(";")[0].strip() == AUTHSERV]


# -- inbound -------------------------------------------------------------------------------
@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_dmarc_pass_is_delivered_with_our_results_on_top(zone, start_milter, tcp):
    publish_domain(zone, "example.org")
    milter = start_milter(tcp=tcp)
    raw = signed(message())
    outcome = send(milter, raw)
    assert outcome.final == SMFIR_ACCEPT
    delivered = outcome.delivered
    names = [n for n, _ in header_fields(delivered)]
    assert names[:2] == ["Authentication-Results", "Received"]     # above Postfix's Received:
    assert delivered.endswith(b"\r\n\r\nHello.\r\n")
    expected = pipeline_says(zone, raw)
    [event] = milter.events(1)
    assert event.verdict == expected.verdict and event.verdict.dmarc.result == "pass"
    assert event.action.kind == expected.action == "accept"
    assert delivered.startswith(render_fields(expected.prepend))      # byte for byte
    assert str(event.facts.client_ip) == CLIENT and event.facts.helo == "client.example"
    assert event.facts.recipients == ("bob@example.net",)
    assert event.upstream_reply.text == "2.0.0 Ok: queued as 4QID1"


def test_spoof_under_p_reject_gets_the_policy_reply(zone, start_milter):
    publish_domain(zone, "example.org")
    zone.add("spammer.test", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    milter = start_milter()
    raw = message(from_addr="ceo@example.org")
    outcome = send(milter, raw, mail_from="x@spammer.test")
    expected = pipeline_says(zone, raw, "x@spammer.test")
    assert expected.action == "reject" and "%" not in expected.reply.text
    assert outcome.final == SMFIR_REPLYCODE and outcome.edits == []
    assert outcome.reply == f"550 {expected.reply.text}".encode()
    assert outcome.reply.startswith(b"550 5.7.26 ") and outcome.delivered is None
    assert milter.events(1)[-1].action.kind == "reject"


def test_forged_results_with_our_authserv_id_are_all_deleted(zone, start_milter):
    publish_domain(zone, "example.org")
    milter = start_milter()
    raw = signed(message(extra_headers=b"Authentication-Results: mx.test; dmarc=pass (forged 1)\r\n"
                                       b"Authentication-Results: other.example; spf=pass\r\n"
                                       b"Authentication-Results: mx.test; dkim=pass (forged 2)\r\n"))
    outcome = send(milter, raw)
    deletions = [p for p in outcome.edits if p[4:5] == SMFIR_CHGHEADER]
    assert [struct.unpack_from("!I", p, 5)[0] for p in deletions] == [3, 1]   # highest first
    delivered = outcome.delivered
    assert len(ours(delivered)) == 1 and "forged" not in ours(delivered)[0]
    assert header_fields(delivered)[0][0] == "Authentication-Results"
    assert "other.example; spf=pass" in [v for _, v in header_fields(delivered)]


def test_quarantine_is_smfir_quarantine_with_the_reason(zone, start_milter):
    publish_domain(zone, "example.org", dmarc="v=DMARC1; p=quarantine")
    zone.add("spammer.test", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    milter = start_milter()
    outcome = send(milter, message(from_addr="ceo@example.org"), mail_from="x@spammer.test")
    action = milter.events(1)[-1].action
    assert action.kind == "quarantine"
    assert outcome.quarantine == action.reason.encode() and outcome.final == SMFIR_ACCEPT
    marks = [v for n, v in header_fields(outcome.delivered) if n == "X-Authfilter-Quarantine"]
    assert len(marks) == 1 and "dmarc=fail" in marks[0]


def test_two_messages_on_one_connection_get_independent_verdicts(zone, start_milter, caplog):
    publish_domain(zone, "example.org")
    zone.add("spammer.test", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    milter = start_milter()
    caplog.set_level(logging.INFO, logger="authfilter.message")
    with session(milter) as client:
        spoof = client.message(message(from_addr="ceo@example.org"), b"<x@spammer.test>",
                               [b"<bob@example.net>"], b"4QSPOOF")
        good = client.message(signed(message(subject="second")), b"<alice@example.org>",
                              [b"<carol@example.net>"], b"4QGOOD")
        client.quit()
    assert spoof.final == SMFIR_REPLYCODE and good.final == SMFIR_ACCEPT
    first, second = milter.events(2)
    assert (first.action.kind, second.action.kind) == ("reject", "accept")
    assert second.facts.mail_from == "alice@example.org"
    assert second.facts.recipients == ("carol@example.net",)       # nothing of message one
    assert "dmarc=pass" in ours(good.delivered)[0] and len(ours(good.delivered)) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "authfilter.message"]
    assert "queue_id=4QGOOD" in lines[1] and "queue_id" not in lines[0]
    assert "reply=\"550 5.7.26" in lines[0]


def test_sasl_authenticated_clients_are_vouched_for(zone, start_milter):
    publish_domain(zone, "example.org")
    milter = start_milter()
    outcome = send(milter, message(from_addr="ceo@example.org"), mail_from="x@elsewhere.test",
                   ip=b"192.0.2.99", macros={b"{auth_authen}": b"ceo"})
    assert outcome.final == SMFIR_ACCEPT and milter.events(1)[-1].facts.trusted


def test_a_client_without_an_address_is_verified_not_trusted(zone, start_milter):
    """CONNECT with family U (Postfix could not name the client): SPF none, DMARC decides."""
    publish_domain(zone, "example.org")
    milter = start_milter()
    with MilterClient(milter.address, macros=MACROS) as client:
        client.negotiate()
        client.step(client.mta.event(SMFIC_CONNECT, raw=b"localhost\0" + SMFIA_UNKNOWN))
        client.helo(b"client.example")
        outcome = client.message(message(from_addr="ceo@example.org"), b"<x@example.org>",
                                 [b"<bob@example.net>"])
        client.quit()
    assert outcome.final == SMFIR_REPLYCODE and outcome.reply.startswith(b"550 5.7.26")
    facts = milter.events(1)[-1].facts
    assert facts.client_ip is None and not facts.trusted
    assert milter.events(1)[-1].verdict.spf.result == "none"


# -- signing roles -------------------------------------------------------------------------
@pytest.fixture
def signing_config(tmp_path) -> Config:
    key_file = tmp_path / "example.org.sel.pem"
    key_file.write_bytes(dkim_key().private_pem)
    key_file.chmod(0o600)
    config = milter_config()
    config.signing.keys = [SigningKeyConfig(domain="example.org", selector="sel",
                                            key_file=str(key_file))]
    return config


def verifies(delivered: bytes) -> bool:
    record = dkim_key().record.encode()
    return dkim.verify(delivered, dnsfunc=lambda name, timeout=5: record)


def test_submission_role_signs(zone, start_milter, signing_config):
    milter = start_milter(signing_config, role="submission")
    outcome = send(milter, message(subject="caf\u00e9 \u2615",
                                   extra_headers=b"X-Folded: one\r\n\ttwo\r\n"))
    assert [p[4:5] for p in outcome.packets] == [SMFIR_INSHEADER, SMFIR_ACCEPT]
    delivered = outcome.delivered
    assert header_fields(delivered)[0][0] == "DKIM-Signature" and not ours(delivered)
    assert verifies(delivered)


def test_local_role_never_refuses(zone, start_milter, signing_config, monkeypatch):
    publish_domain(zone, "example.org")
    milter = start_milter(signing_config, role="local")
    spoof = send(milter, message(from_addr="alice@example.org"), mail_from="x@spammer.test",
                 ip=b"203.0.113.9")                      # inbound would reject this
    assert spoof.final == SMFIR_ACCEPT and verifies(spoof.delivered)

    async def broken(self, raw, *, crlf_only=False):
        raise RuntimeError("bug in the pipeline")
    monkeypatch.setattr(Transaction, "finish", broken)
    raw = message()
    outcome = send(milter, raw)
    assert outcome.packets == [packet(SMFIR_ACCEPT)]        # accepted unchanged
    assert outcome.delivered.endswith(raw)


# -- failures ------------------------------------------------------------------------------
def test_a_pipeline_error_is_a_tempfail(zone, start_milter, monkeypatch):
    publish_domain(zone, "example.org")
    milter = start_milter()

    async def broken(self, raw, *, crlf_only=False):
        raise RuntimeError("bug in the pipeline")
    monkeypatch.setattr(Transaction, "finish", broken)
    outcome = send(milter, signed(message()))
    assert outcome.reply == b"451 4.3.0 Temporary failure checking the message, try again later"


def test_an_oversized_packet_closes_the_connection(zone, start_milter):
    milter = start_milter()
    with session(milter) as client:
        client.send_raw(struct.pack("!I", MAX_PACKET + 1) + SMFIC_MAIL)
        with pytest.raises(ConnectionError):
            client.read_packet()
    with session(milter) as client:                      # the next connection is served
        with pytest.raises(ConnectionError):
            client.send_raw(packet(SMFIC_HELO, b"a", b"b"))    # two strings: malformed
            client.read_packet()
    publish_domain(zone, "example.org")
    assert send(milter, signed(message())).final == SMFIR_ACCEPT


@pytest.mark.parametrize(("oversize", "final"), [("tempfail", SMFIR_REPLYCODE),
                                                 ("accept", SMFIR_ACCEPT)])
def test_a_message_over_the_size_limit(zone, start_milter, oversize, final):
    publish_domain(zone, "example.org")
    limits = MilterLimits(max_message_size=20_000, oversize=oversize)
    milter = start_milter(limits=limits)
    outcome = send(milter, signed(message(body=b"x" * 70 + b"\r\n") * 400))
    assert outcome.final == final and outcome.edits == []
    if oversize == "tempfail":
        assert outcome.reply.startswith(b"451 4.3.4 ")
    assert send(milter, signed(message())).final == SMFIR_ACCEPT     # the next one is checked


def test_a_slow_check_sends_progress(zone, start_milter, monkeypatch):
    publish_domain(zone, "example.org")
    milter = start_milter(limits=MilterLimits(progress_interval=0.3))
    finish = Transaction.finish

    async def slow(self, raw, *, crlf_only=False):
        await asyncio.sleep(1.2)
        return await finish(self, raw, crlf_only=crlf_only)
    monkeypatch.setattr(Transaction, "finish", slow)
    outcome = send(milter, signed(message()))
    assert outcome.progress >= 2 and outcome.final == SMFIR_ACCEPT


def test_connections_over_the_limit_are_closed(zone, start_milter):
    milter = start_milter(max_sessions=1)
    with session(milter):
        refused = MilterClient(milter.address)
        with pytest.raises(ConnectionError):
            refused.negotiate()
        refused.close()
    time.sleep(0.1)
    publish_domain(zone, "example.org")
    assert send(milter, signed(message())).final == SMFIR_ACCEPT


# -- the listener --------------------------------------------------------------------------
def test_the_unix_socket_is_created_for_postfix(zone, tmp_path, start_milter):
    milter = start_milter()
    path = milter.address[len("unix:"):]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    try:                     # no group given: Postfix's, when we may give it (root), so it can connect
        postfix = grp.getgrnam("postfix").gr_gid
    except KeyError:
        postfix = None
    if postfix is not None and os.geteuid() == 0:
        assert os.stat(path).st_gid == postfix
    group = grp.getgrgid(os.getgid() if os.getuid() else grp.getgrnam("daemon").gr_gid)
    other = bind_milter_socket(MilterListener(f"unix:{tmp_path}/private.sock", socket_mode=0o600,
                                              socket_group=group.gr_name))
    info = os.stat(f"{tmp_path}/private.sock")
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_gid == group.gr_gid
    with pytest.raises(OSError, match="no group"):
        bind_milter_socket(MilterListener(f"unix:{tmp_path}/x.sock", socket_group="no-such-gr"))
    with pytest.raises(OSError, match="another process listens"):
        bind_milter_socket(MilterListener(f"unix:{tmp_path}/private.sock"))
    other.close()                                             # now a stale socket file
    again = bind_milter_socket(MilterListener(f"unix:{tmp_path}/private.sock"))
    again.close()
    os.symlink(path, f"{tmp_path}/link.sock")
    with pytest.raises(OSError, match="not a socket"):
        bind_milter_socket(MilterListener(f"unix:{tmp_path}/link.sock"))
    assert os.path.islink(f"{tmp_path}/link.sock")           # left alone
    with pytest.raises(FileNotFoundError, match=f"unix:{tmp_path}/none/x.sock"):   # says where
        bind_milter_socket(MilterListener(f"unix:{tmp_path}/none/x.sock"))
    milter.stop()
    assert not os.path.exists(path)                           # removed at the end of drain


def test_reload_applies_to_new_connections_only(zone, start_milter):
    publish_domain(zone, "example.org")
    milter = start_milter()
    with session(milter) as old:
        renamed = milter_config()
        renamed.general.authserv_id = "mx2.test"
        milter.server.reload(milter.pipeline(renamed))
        kept = old.message(signed(message()), b"<alice@example.org>", [b"<bob@example.net>"])
    assert ours(kept.delivered)                                 # still mx.test
    fresh = send(milter, signed(message()))
    assert header_fields(fresh.delivered)[0][1].startswith("mx2.test;")


def test_drain_lets_the_open_message_finish(zone, start_milter):
    publish_domain(zone, "example.org")
    milter = start_milter()
    address = milter.address
    idle = session(milter)
    with session(milter) as busy:
        mta = busy.mta
        mta.macros[b"i"] = b"4QDRAIN"
        seen, body = postfix_view(signed(message()), leading_space=True)
        mta.event(SMFIC_MAIL, b"<alice@example.org>")
        mta.event(SMFIC_RCPT, b"<bob@example.net>")
        for header in seen:
            mta.event(SMFIC_HEADER, header.name, header.value)
        mta.event(SMFIC_EOH)
        mta.event(SMFIC_BODY, raw=body)
        busy.flush()
        time.sleep(0.1)
        drained = asyncio.run_coroutine_threadsafe(milter.server.drain(5.0), milter.loop)
        with pytest.raises(ConnectionError):
            idle.read_packet()                                  # idle: closed at once
        with pytest.raises(ConnectionRefusedError):
            MilterClient(address)                               # no new connections
        replies = busy.step(mta.event(SMFIC_BODYEOB))
        assert replies[-1] == packet(SMFIR_ACCEPT)              # the open message is answered
        with pytest.raises(ConnectionError):
            busy.read_packet()                                  # then the connection closes
    drained.result(10)
    idle.close()
    assert not milter.server.sessions and milter.events(1)[-1].action.kind == "accept"
    assert not os.path.exists(address[len("unix:"):])


def test_tcp_listener_sets_nodelay(zone, start_milter):
    milter = start_milter(tcp=True)
    with session(milter):
        time.sleep(0.05)
        [connection] = milter.server.sessions
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
