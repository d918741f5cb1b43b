"""A small real SMTP server on loopback that keeps what it receives: the upstream in proxy tests.

It runs in its own thread and event loop on a port the OS picks, behaves like Postfix's
reinjection smtpd where the proxy cares (EHLO lists PIPELINING, DSN, SMTPUTF8, XFORWARD;
several transactions per connection; XFORWARD reset after each), and records every MAIL and
RCPT line exactly as it arrived, so tests can check that parameters pass unchanged.
(aiosmtpd would answer 555 to RET/ENVID/NOTIFY/ORCPT, which is what the proxy must pass on.)

    sink = SmtpSink().start()
    sink.refuse_rcpt["nobody@example.net"] = b"550 5.1.1 No such user"
    sink.data_reply = b"451 4.3.0 try later"
    sink.cr_line_ends = True        # a lenient next hop: a bare CR ends a line too (smuggling)
    ...  sink.messages[-1].content / .mail_line / .rcpt_lines / .xforward / .data
    sink.stop()
"""
from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field

EHLO_REPLY = (b"250-sink.test\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n"
              b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n"
              b"250 XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n")
_ADDRESS = re.compile(rb"^(?:FROM|TO):\s*<([^>]*)>", re.IGNORECASE)


@dataclass
class Received:
    mail_line: bytes
    rcpt_lines: list[bytes]
    content: bytes                 # dot-unstuffed, as it would be queued
    xforward: dict[str, str]
    connection: int                # which connection brought it (connection reuse)
    data: bytes = b""              # the DATA bytes as they came, stuffed, with the end marker

    @property
    def mail_from(self) -> str:
        m = _ADDRESS.match(self.mail_line[5:])
        return m.group(1).decode() if m else ""

    @property
    def recipients(self) -> list[str]:
        return [m.group(1).decode() for line in self.rcpt_lines if (m := _ADDRESS.match(line[5:]))]


class _LineReader:
    """Lines up to LF (Postfix-like: a bare LF ends a line) or, with ``cr_line_ends``, also up
    to a bare CR, as the lenient MTAs that SMTP smuggling exploits read them.  Keeps every
    byte it read in ``taken`` (for the DATA bytes as they came)."""

    _BARE_CR = re.compile(rb"\r(?!\n)")

    def __init__(self, reader: asyncio.StreamReader, cr_line_ends: bool) -> None:
        self.reader = reader
        self.cr_line_ends = cr_line_ends
        self.pending = bytearray()
        self.pos = 0
        self.taken = bytearray()

    async def readline(self) -> bytes:
        while True:
            end = self._line_end()
            if end is None:
                more = await self.reader.read(1 << 16)
                if more:
                    del self.pending[:self.pos]
                    self.pos = 0
                    self.pending += more
                    continue
                end = len(self.pending)
            line = bytes(self.pending[self.pos:end])
            self.pos = end
            self.taken += line
            return line

    def _line_end(self) -> int | None:
        lf = self.pending.find(b"\n", self.pos)
        if self.cr_line_ends:
            cr = self._BARE_CR.search(self.pending, self.pos, lf + 1 if lf >= 0 else len(self.pending))
            if cr is not None and cr.end() < len(self.pending):
                return cr.end()
        return lf + 1 if lf >= 0 else None


async def _read_message(reader: _LineReader) -> bytes:
    """Message lines up to the "." line, dot-unstuffed (RFC 5321 s. 4.5.2), line by line."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("client left during DATA")
        if line.rstrip(b"\r\n") == b".":
            return b"".join(lines)
        lines.append(line[1:] if line.startswith(b".") else line)


@dataclass
class SmtpSink:
    host: str = "127.0.0.1"
    port: int = 0
    messages: list[Received] = field(default_factory=list)
    refuse_rcpt: dict[str, bytes] = field(default_factory=dict)
    data_reply: bytes | None = None
    data_delay: float = 0.0
    cr_line_ends: bool = False
    connections: int = 0
    commands: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.commands.clear()
        self.refuse_rcpt.clear()
        self.data_reply = None
        self.data_delay = 0.0
        self.cr_line_ends = False

    # -- one connection ----------------------------------------------------------------------
    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.lock:
            self.connections += 1
            number = self.connections
        xforward: dict[str, str] = {}
        mail: bytes | None = None
        rcpts: list[bytes] = []
        writer.write(b"220 sink.test ESMTP\r\n")
        reader = _LineReader(reader, self.cr_line_ends)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                line = line.rstrip(b"\r\n")
                with self.lock:
                    self.commands.append(line)
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    mail, rcpts, xforward = None, [], {}
                    writer.write(EHLO_REPLY if verb == b"EHLO" else b"250 sink.test\r\n")
                elif line[:8].upper() == b"XFORWARD":
                    for word in line[9:].split():
                        key, _, value = word.decode().partition("=")
                        xforward[key.upper()] = value
                    writer.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"MAIL":
                    mail, rcpts = line, []
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    m = _ADDRESS.match(line[5:])
                    refusal = self.refuse_rcpt.get(m.group(1).decode()) if m else None
                    if refusal:
                        writer.write(refusal + b"\r\n")
                    elif mail is None:
                        writer.write(b"503 5.5.1 Error: need MAIL command\r\n")
                    else:
                        rcpts.append(line)
                        writer.write(b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA":
                    if not rcpts:
                        writer.write(b"554 5.5.1 Error: no valid recipients\r\n")
                        continue
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    reader.taken.clear()
                    content = await _read_message(reader)
                    data = bytes(reader.taken)
                    if self.data_delay:
                        await asyncio.sleep(self.data_delay)
                    if self.data_reply:
                        writer.write(self.data_reply + b"\r\n")
                    else:
                        with self.lock:
                            self.messages.append(Received(mail, rcpts, content, xforward, number, data))
                            queue_id = f"SINK{len(self.messages):04d}"
                        writer.write(f"250 2.0.0 Ok: queued as {queue_id}\r\n".encode())
                    mail, rcpts, xforward = None, [], {}
                elif verb == b"RSET":
                    mail, rcpts, xforward = None, [], {}
                    writer.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"NOOP":
                    writer.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"502 5.5.2 Error: command not recognized\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "SmtpSink":
        started = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)

            async def serve():
                self._server = await asyncio.start_server(self._session, self.host, self.port,
                                                          limit=64 * 1024 * 1024)
                self.port = self._server.sockets[0].getsockname()[1]
                started.set()

            loop.run_until_complete(serve())
            loop.run_forever()
            self._server.close()
            sessions = asyncio.all_tasks(loop)
            for task in sessions:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*sessions, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="smtp-sink", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("SMTP sink did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None
