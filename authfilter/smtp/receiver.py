"""The receive buffer: command lines and whole DATA blocks found in bulk, without I/O.

Bytes from the socket are appended to one ``bytearray``.  A command line is everything up to
LF (a CR before it is dropped; RFC 5321 s. 2.3.8 asks for CRLF, bare LF is tolerated in
commands as Postfix does).  A DATA block ends at CRLF "." CRLF (RFC 5321 s. 4.1.1.4); only that
exact sequence ends it, so a bare-LF "." line cannot end it (SMTP smuggling, CVE-2023-51764).

One incremental ``bytearray.find`` of LF "." over new bytes finds the end marker and every
line that starts with a dot, in bulk: no Python work per line, whatever the message size.
Dot-unstuffing (s. 4.5.2) is then one ``bytes.replace`` and only when a dot line was seen;
a message without any needs no pass at all, here or when it is sent on.  Over-long command
lines and over-size messages are consumed and discarded so memory stays bounded, then
reported once.
"""
from __future__ import annotations

END_OF_DATA = b"\r\n.\r\n"


class LineTooLong(Exception):
    """A command line longer than the limit was read and discarded."""


class DataTooBig(Exception):
    """A DATA block longer than the limit was read to its end and discarded."""

    def __init__(self, size: int):
        super().__init__(f"message of {size} bytes or more")
        self.size = size


class ReceiveBuffer:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0            # bytes already searched for the current terminator
        self._skipping = False       # inside an over-long line or over-size DATA block
        self._skipped = 0            # bytes thrown away by the current skip
        self._data_start = False     # no byte of the current DATA block examined yet
        self._dots = 0               # dot-stuffed lines seen in the current DATA block
        self.dot_lines = 0           # the same, for the last complete block

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        """Forget everything buffered (after STARTTLS: RFC 3207 s. 4.2 plaintext injection)."""
        self._buf.clear()
        self._scanned = 0

    def head(self, n: int) -> bytes:
        """The first ``n`` buffered bytes, not consumed."""
        return bytes(self._buf[:n])

    def consume(self, n: int) -> None:
        del self._buf[:n]
        self._scanned = 0

    # -- commands --------------------------------------------------------------------------
    def take_line(self, max_length: int) -> bytes | None:
        """The next command line without its line end, or None if it is not complete yet.

        Raises :class:`LineTooLong` once the whole over-long line has been discarded.
        """
        end = self._buf.find(b"\n", self._scanned)
        if end < 0:
            if len(self._buf) > max_length:
                self._skipping = True
                self._buf.clear()
                self._scanned = 0
            else:
                self._scanned = len(self._buf)
            return None
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        self._scanned = 0
        if self._skipping or end > max_length:
            self._skipping = False
            raise LineTooLong()
        return line[:-1] if line.endswith(b"\r") else line

    # -- message data ----------------------------------------------------------------------
    def begin_data(self) -> None:
        """Called when 354 has been sent: the next bytes are message data."""
        self._scanned = 0
        self._data_start = True

    def take_data(self, max_size: int) -> bytes | None:
        """The whole DATA block, dot-unstuffed, ending in CRLF (the CRLF before "."), or None
        while the end marker has not arrived.  The empty message is ``b""``.  Afterwards
        ``dot_lines`` counts the LF "." sequences in the block as received (0: nothing was
        unstuffed and nothing needs stuffing when the block is sent on).

        Each hit of LF "." is the end marker (CRLF "." CRLF), a dot-stuffed CRLF line, or a
        "." after a bare LF, which is not a line start for us but would be for a lenient MTA.
        Raises :class:`DataTooBig` once an over-size block has been read to its end.
        """
        buf = self._buf
        if self._data_start:                     # as if the block began right after a CRLF
            if len(buf) < 3 and b".\r\n".startswith(bytes(buf)):
                return None
            self._data_start = False
            if buf[:3] == b".\r\n":
                del buf[:3]
                self.dot_lines = 0
                return b""
            self._dots = 1 if buf[:1] == b"." else 0
        if self._skipping:
            return self._skip_data()
        pos = max(self._scanned - 1, 0)
        while True:
            hit = buf.find(b"\n.", pos)
            if hit < 0 or len(buf) < hit + 4:   # not found, or too close to the end to tell
                self._scanned = len(buf) if hit < 0 else hit
                if len(buf) > max_size + 2:
                    self._skipping = True
                    return self._skip_data()
                return None
            if buf[hit + 2:hit + 4] == b"\r\n" and hit and buf[hit - 1] == 0x0D:
                break
            self._dots += 1
            pos = hit + 2
        self._scanned = 0
        if hit + 1 > max_size:
            del buf[:hit + 4]
            raise DataTooBig(hit + 1)
        content = bytes(buf[:hit + 1])
        del buf[:hit + 4]
        self.dot_lines = self._dots
        return unstuff(content) if self._dots else content

    def _skip_data(self) -> None:
        """Over the limit: keep only what could be a split end marker until it comes."""
        buf = self._buf
        end = buf.find(END_OF_DATA, max(self._scanned - 4, 0))
        if end < 0:
            keep = min(4, len(buf))
            self._skipped += len(buf) - keep
            del buf[:len(buf) - keep]
            self._scanned = len(buf)
            return None
        size = self._skipped + end + 2
        self._skipping, self._skipped, self._scanned = False, 0, 0
        del buf[:end + 5]
        raise DataTooBig(size)


def unstuff(content: bytes) -> bytes:
    """RFC 5321 s. 4.5.2: a line that starts with "." loses that first "."."""
    if content.startswith(b"."):
        content = content[1:]
    if b"\r\n." in content:
        content = content.replace(b"\r\n.", b"\r\n")
    return content


def stuff(content: bytes) -> bytes:
    """For sending: a dot after every LF, and at the start, gets another one.

    For CRLF lines this is RFC 5321 s. 4.5.2 stuffing, the inverse of :func:`unstuff`.  A "."
    after a bare LF is doubled too: an MTA that takes bare LF as a line end (Postfix without
    smtpd_forbid_bare_newline) then sees a stuffed line instead of an end of data, so nothing
    can be smuggled past it; one that does not only sees one more dot in a broken line.
    ``content`` must end in CRLF (or be empty).
    """
    if b"\n." in content:
        content = content.replace(b"\n.", b"\n..")
    if content.startswith(b"."):
        content = b"." + content
    return content
