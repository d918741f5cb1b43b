"""The receive buffer: command lines and whole DATA blocks found in bulk, without I/O.

Bytes from the socket are appended to one ``bytearray``.  A command line is everything up to
LF (a CR before it is dropped; RFC 5321 s. 2.3.8 asks for CRLF, bare LF is tolerated in
commands as Postfix does).  A DATA block ends at CRLF "." CRLF (RFC 5321 s. 4.1.1.4); only that
exact sequence ends it, so a bare-LF "." line cannot end it (SMTP smuggling, CVE-2023-51764).

One incremental regex search over the new bytes of each read finds, at C speed, the few places
that matter: every LF "." (the end marker or a dot-stuffed line) and every bare LF.  So there is no Python work per line, whatever the message size, and three facts
come for free: where the end is, which dots to remove (RFC 5321 s. 4.5.2 unstuffing is then a
join of the pieces between them, no search at all) and whether the block has a bare LF (when it
has none, which is nearly always, nobody needs to look for one again, and the block can go
upstream dot-stuffed as it came).  Over-long command lines and over-size messages are consumed
and discarded so memory stays bounded, then reported once; so are blocks whose header is over
:data:`~authfilter.message.MAX_HEADER_BYTES`, as soon as that is certain (one incremental
search for the empty line while the header lasts): a 1.6 MB header folded 400,000 times is
then skipped at the speed of a search for the end marker, not scanned line by line (21 ms).

Bare CR and bare LF in a DATA block (RFC 5321 s. 2.3.8 forbids both) are handled so that what
goes upstream has CRLF line ends only, and is exactly what the checks saw; no byte sequence in
it can be read as an end of data by a next hop, however lenient (SMTP smuggling with
``\r.\r\n``, ``\r.\r``, ``\r\n.\r``, ``\n.\n`` and the like):

* a bare LF is normalized to CRLF (what Postfix 3.9 does by default,
  ``smtpd_forbid_bare_newline = normalize``).  Nothing changes meaning: every MIME parser,
  :class:`~authfilter.message.Message` and every DKIM verifier read a bare LF as a line end
  already, so signatures verify the same before and after.  A bare LF starts a line for
  unstuffing too (a client that ends lines with LF stuffs after them), but never an end of
  data: LF "." LF is a "." line of the message.  The normalized block is stuffed again, so
  such a line goes on as a stuffed "..", never as an end;
* a bare CR makes the block refused (:class:`BareCR`: 550 5.5.2, the code and wording of
  Postfix's ``smtpd_forbid_bare_newline = reject`` for a bare LF).  It has no faithful
  normalization: as CRLF it would add header lines (``Subject: x\rFrom: y`` becomes two
  fields) and break a DKIM signature over the bytes as sent; dropped or replaced it would
  change the signed bytes too; relayed as it is, a next hop that ends lines at CR could see
  an end of data and a second, unchecked transaction.  RFC 6376 s. 5.3 has signers convert
  bare CRs before signing, so legitimate signed mail does not carry them.

The bare-CR test is one C-speed regex search over the finished block (about 2 us for 4 KB);
a block with no bare LF, nearly all of them, is not copied or rewritten.
"""
from __future__ import annotations

import re
from bisect import bisect_left

from ..message import HEADER_TOO_BIG, MAX_HEADER_BYTES
from . import protocol

END_OF_DATA = b"\r\n.\r\n"
_LF_DOT_OR_BARE_LF = re.compile(rb"\n(?:\.|(?<!\r\n))")
_LF_DOT = re.compile(rb"\n\.")            # once a bare LF was seen, only the dots matter
_BARE_CR = re.compile(rb"\r[^\n]")       # a block ends in CRLF: a CR at its very end is no bare CR


class LineTooLong(Exception):
    """A command line longer than the limit was read and discarded."""


class Refused(Exception):
    """A DATA block that was read to its end and discarded; ``reply`` says why, for the client."""

    reply = b""


class BareCR(Refused):
    """A CR not followed by LF (see the module docstring)."""

    reply = protocol.BARE_CR

    def __init__(self) -> None:
        super().__init__("bare CR in DATA")


class DataTooBig(Refused):
    """Longer than the size limit."""

    reply = protocol.SIZE_EXCEEDED

    def __init__(self, size: int):
        super().__init__(f"message of {size} bytes or more")
        self.size = size


class HeaderTooBig(Refused):
    """A header block over :data:`~authfilter.message.MAX_HEADER_BYTES`."""

    reply = protocol.reply(552, f"5.3.4 Error: {HEADER_TOO_BIG}")

    def __init__(self) -> None:
        super().__init__(HEADER_TOO_BIG)


class ReceiveBuffer:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0            # bytes already searched for the current terminator
        self._skipping = False       # inside an over-long line or over-size DATA block
        self._skipped = 0            # bytes thrown away by the current skip
        self._data_start = False     # no byte of the current DATA block examined yet
        self._dots: list[int] = []   # offsets of the stuffing dots of the current DATA block
        self._bare_lf = False        # the current DATA block has a bare LF
        self._end: tuple[int, int] | None = None   # its (size, bytes to consume), once found
        self._head_open = False      # the end of its header block not found yet
        self._head_scanned = 0       # bytes searched for that end
        self._refusal: Refused | None = None       # why it is being skipped, if not its size
        # The last complete DATA block (see take_data):
        self.wire = b""              # dot-stuffed, without the end marker: as received, or
                                     # stuffed again after bare LFs were normalized
        self.dot_lines = 0           # stuffing dots in it (0: the content is ``wire`` itself)
        self.bare_lf = False         # it had an LF without a CR before it (now CRLF)

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
        self._dots = []
        self._bare_lf = False
        self._end = None
        self._head_open, self._head_scanned, self._refusal = True, 0, None
        self.wire, self.dot_lines, self.bare_lf = b"", 0, False

    def data_complete(self, max_size: int) -> bool:
        """Look for the end of the DATA block in the bytes fed so far (from where the last look
        stopped); True once :meth:`take_data` has the block (or will raise DataTooBig).

        Cheap enough to call for every read: the proxy calls it as bytes arrive and wakes the
        session only when the block is complete.  Each hit of LF "." is the end marker
        (CRLF "." CRLF) or a dot-stuffed line, after CRLF or after a bare LF (which never ends
        the block; the block counts as having a bare LF).  An over-size block is discarded as
        it arrives, up to its end.
        """
        if self._end is not None:
            return True
        buf = self._buf
        if self._data_start:                     # as if the block began right after a CRLF
            if len(buf) < 3 and b".\r\n".startswith(bytes(buf)):
                return False
            self._data_start = False
            if buf[:3] == b".\r\n":
                self._end = (0, 3)
                return True
            if buf[:1] == b".":
                self._dots.append(0)
        if self._skipping:
            return self._skip_data()
        pos = self._scanned
        while True:
            found = (_LF_DOT if self._bare_lf else _LF_DOT_OR_BARE_LF).search(buf, pos)
            if found is None:
                # An LF at the very end may start a "." line: look at it again next time.
                return self._more_needed(max(len(buf) - 1, 0), max_size)
            hit = found.start()
            if found.end() == hit + 1:           # a bare LF ("." may still come after it)
                self._bare_lf = True
                pos = found.end()
                continue
            if not hit or buf[hit - 1] != 0x0D:  # a bare LF "." : stuffing, never the end
                self._bare_lf = True
                self._dots.append(hit + 1)
                pos = hit + 2
                continue
            if len(buf) < hit + 4:               # CRLF "." but too close to the end to tell
                return self._more_needed(hit, max_size)
            if buf[hit + 2:hit + 4] == b"\r\n":
                self._end = (hit + 1, hit + 4)
                return True
            self._dots.append(hit + 1)
            pos = hit + 2

    def take_data(self, max_size: int) -> bytes | None:
        """The whole DATA block, dot-unstuffed, CRLF line ends only, ending in CRLF (the CRLF
        before "."), or None while the end marker has not arrived.  The empty message is
        ``b""``.  Afterwards ``wire`` is the block stuffed for relaying (as received unless it
        had a bare LF), ``dot_lines`` the number of stuffing dots in it and ``bare_lf`` whether
        bare LFs were normalized to CRLF.
        Raises :class:`DataTooBig` once an over-size block has been read to its end, and
        :class:`BareCR` for a block with a bare CR (consumed: the next command follows).
        """
        if not self.data_complete(max_size):
            return None
        buf = self._buf
        size, consumed = self._end
        self._end, self._scanned = None, 0
        if self._skipping or size > max_size:
            refusal = self._refusal or DataTooBig(size)
            self._skipping, self._skipped, self._refusal = False, 0, None
            del buf[:consumed]
            raise refusal
        if _BARE_CR.search(buf, 0, size) is not None:
            del buf[:consumed]
            raise BareCR()
        with memoryview(buf) as view:
            wire = bytes(view[:size])
        del buf[:consumed]
        content = unstuff_at(wire, self._dots) if self._dots else wire
        if self._bare_lf:            # no bare CR either, so this turns every bare LF into CRLF
            content = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            wire = stuff(content)
        self.wire, self.dot_lines, self.bare_lf = wire, len(wire) - len(content), self._bare_lf
        return content

    def release_block(self) -> bytes:
        """``wire`` of the last block; the buffer forgets the block (an idle session must not
        keep a big message alive)."""
        wire, self.wire = self.wire, b""
        return wire

    def _more_needed(self, scanned: int, max_size: int) -> bool:
        self._scanned = scanned
        if len(self._buf) > max_size + 2:
            self._skipping = True
            return self._skip_data()
        if self._head_open and self._header_too_big(scanned):
            self._skipping, self._refusal = True, HeaderTooBig()
            return self._skip_data()
        return False

    def _header_too_big(self, scanned: int) -> bool:
        """Whether the header block, unstuffed, is certainly over MAX_HEADER_BYTES, from the
        bytes before ``scanned`` (whose stuffing dots are known); closes the question once its
        end is found.  The exact test is the front-end's, on the whole block
        (:func:`~authfilter.message.header_limit_problem`); this one only skips a block early.
        After a bare LF it gives up: normalized, "\\n\\r\\n" would end the header sooner."""
        buf = self._buf
        if self._bare_lf or (not self._head_scanned and buf[:2] == b"\r\n"):
            self._head_open = False
            return False
        end = buf.find(b"\r\n\r\n", max(self._head_scanned - 3, 0), scanned + 3)
        if end >= 0:
            self._head_open = False
            return end + 4 - bisect_left(self._dots, end) > MAX_HEADER_BYTES
        self._head_scanned = scanned
        return scanned - len(self._dots) > MAX_HEADER_BYTES

    def _skip_data(self) -> bool:
        """Over the limit: keep only what could be a split end marker until it comes."""
        buf = self._buf
        end = buf.find(END_OF_DATA, max(self._scanned - 4, 0))
        if end < 0:
            keep = min(4, len(buf))
            self._skipped += len(buf) - keep
            del buf[:len(buf) - keep]
            self._scanned = len(buf)
            return False
        self._end = (self._skipped + end + 2, end + 5)
        return True


def unstuff_at(wire: bytes, dots: list[int]) -> bytes:
    """``wire`` without the bytes at the offsets ``dots`` (ascending): the stuffing dots the
    receiver found (RFC 5321 s. 4.5.2).  One join of the pieces, no search."""
    with memoryview(wire) as view:
        pieces = [view[start:dot] for start, dot in zip([0] + [d + 1 for d in dots], dots)]
        pieces.append(view[dots[-1] + 1:])
        return b"".join(pieces)


def unstuff(content: bytes) -> bytes:
    """RFC 5321 s. 4.5.2: a line that starts with "." loses that first "."."""
    if content.startswith(b"."):
        content = content[1:]
    if b"\r\n." in content:
        content = content.replace(b"\r\n.", b"\r\n")
    return content


def stuff(content: bytes) -> bytes:
    """For sending: a dot after every LF, and at the start, gets another one.

    For CRLF lines this is RFC 5321 s. 4.5.2 stuffing, the inverse of :func:`unstuff` (and of
    the receiver's unstuffing, which also takes a bare LF as a line start).
    ``content`` must end in CRLF (or be empty).  One search pass (``bytes.replace`` would make
    two: it counts first).
    """
    lines = content.split(b"\n.")
    if len(lines) > 1:
        content = b"\n..".join(lines)
    if content.startswith(b"."):
        content = b"." + content
    return content
