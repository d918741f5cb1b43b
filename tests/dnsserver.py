"""A real authoritative DNS server on loopback for the tests (UDP and TCP, dnspython wire format).

It serves whatever records a test adds, answers NXDOMAIN / NODATA with an SOA in the authority
section, follows CNAMEs inside its data, and can be told to misbehave for chosen names:
``"timeout"`` (never answers), ``"servfail"``, ``"refused"`` or ``"garbage"`` (an unparsable reply).

    server = DnsTestServer().start()
    server.add("example.org", "TXT", "v=spf1 -all")
    server.misbehave("slow.example.org", "timeout")
    resolver = Resolver([server.address])
"""
from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections import defaultdict

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

SOA_TEXT = "ns.test. hostmaster.test. 1 3600 600 86400 60"


def txt_rdata(value: str | bytes | list) -> str:
    """Zone-file text for a TXT value; long strings are split into 255-byte pieces."""
    if isinstance(value, list):
        parts = [p.encode() if isinstance(p, str) else p for p in value]
    else:
        raw = value.encode() if isinstance(value, str) else value
        parts = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    out = []
    for p in parts:
        esc = "".join(chr(b) if 0x20 <= b < 0x7f and b not in (0x22, 0x5c) else f"\\{b:03d}" for b in p)
        out.append(f'"{esc}"')
    return " ".join(out)


class DnsTestServer:
    def __init__(self, host: str = "127.0.0.1", ttl: int = 300) -> None:
        self.host = host
        self.ttl = ttl
        self.records: dict[tuple[str, int], list[str]] = defaultdict(list)
        self.ttls: dict[tuple[str, int], int] = {}
        self.behaviour: dict[str | tuple[str, int], str] = {}   # by name, or (name, rdtype)
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._servers: list[socketserver.BaseServer] = []
        self.port = 0

    # -- data ----------------------------------------------------------------------------
    def add(self, name: str, rdtype: str, value, ttl: int | None = None) -> "DnsTestServer":
        rdt = dns.rdatatype.from_text(rdtype)
        is_text = rdt in (dns.rdatatype.TXT, dns.rdatatype.SPF)
        text = txt_rdata(value) if is_text else _absolute(rdt, str(value))
        with self._lock:
            self.records[(_norm(name), rdt)].append(text)
            if ttl is not None:
                self.ttls[(_norm(name), rdt)] = ttl
        return self

    def misbehave(self, name: str, how: str, rdtype: str | None = None) -> "DnsTestServer":
        """Misbehave for every query about ``name``, or only for ``rdtype`` queries if given."""
        assert how in ("timeout", "servfail", "refused", "garbage")
        key = _norm(name) if rdtype is None else (_norm(name), dns.rdatatype.from_text(rdtype))
        self.behaviour[key] = how
        return self

    def recover(self, name: str) -> "DnsTestServer":
        """Stop misbehaving for ``name`` (every record type)."""
        with self._lock:
            for key in [k for k in self.behaviour if k == _norm(name) or k[0] == _norm(name)]:
                del self.behaviour[key]
        return self

    def reset(self) -> None:
        with self._lock:
            self.records.clear()
            self.ttls.clear()
            self.behaviour.clear()
            self.queries.clear()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- serving -------------------------------------------------------------------------
    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        if not query.question:
            return None
        q = query.question[0]
        qname = _norm(q.name.to_text())
        with self._lock:
            self.queries.append((qname, dns.rdatatype.to_text(q.rdtype)))
        how = self.behaviour.get((qname, q.rdtype)) or self.behaviour.get(qname)
        if how == "timeout":
            return None
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        if how == "garbage":
            return resp.to_wire()[:7]
        if how in ("servfail", "refused"):
            resp.set_rcode(dns.rcode.SERVFAIL if how == "servfail" else dns.rcode.REFUSED)
            return resp.to_wire()
        with self._lock:
            name, seen = qname, set()
            while True:
                cname = self.records.get((name, dns.rdatatype.CNAME))
                if cname and q.rdtype != dns.rdatatype.CNAME and name not in seen:
                    seen.add(name)
                    resp.answer.append(self._rrset(name, dns.rdatatype.CNAME, cname))
                    name = _norm(cname[0])
                    continue
                break
            data = self.records.get((name, q.rdtype))
            if data:
                resp.answer.append(self._rrset(name, q.rdtype, data))
            elif not resp.answer:
                if not self._exists(name):
                    resp.set_rcode(dns.rcode.NXDOMAIN)
                resp.authority.append(dns.rrset.from_text("test.", 60, "IN", "SOA", SOA_TEXT))
        try:
            return resp.to_wire(max_size=65535)
        except Exception:
            return None

    def _rrset(self, name: str, rdtype: int, data: list[str]) -> dns.rrset.RRset:
        ttl = self.ttls.get((name, rdtype), self.ttl)
        return dns.rrset.from_text_list(name + ".", ttl, "IN", rdtype, data)

    def _exists(self, name: str) -> bool:
        suffix = "." + name
        return any(n == name or n.endswith(suffix) for n, _ in self.records)

    def start(self) -> "DnsTestServer":
        outer = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                reply = outer.answer(data)
                if reply is not None:
                    if len(reply) > 512 and not _has_edns(data):
                        reply = _truncated(data)
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self):
                conn = self.request
                conn.settimeout(5)
                try:
                    while True:
                        head = _recv_exact(conn, 2)
                        if not head:
                            return
                        wire = _recv_exact(conn, struct.unpack("!H", head)[0])
                        reply = outer.answer(wire)
                        if reply is None:
                            return
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

        for _ in range(20):
            udp = socketserver.ThreadingUDPServer((self.host, 0), Udp)
            port = udp.server_address[1]
            try:
                tcp = socketserver.ThreadingTCPServer((self.host, port), Tcp)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise RuntimeError("could not bind a DNS test server")
        udp.daemon_threads = tcp.daemon_threads = True
        self.port = port
        self._servers = [udp, tcp]
        for srv in self._servers:
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers = []


def _absolute(rdt: int, text: str) -> str:
    """Host names in CNAME/PTR/NS/MX data are taken as absolute, with or without the dot."""
    if rdt in (dns.rdatatype.CNAME, dns.rdatatype.PTR, dns.rdatatype.NS) and not text.endswith("."):
        return text + "."
    if rdt == dns.rdatatype.MX:
        pref, _, host = text.partition(" ")
        return f"{pref} {host.strip().rstrip('.')}."
    return text


def _norm(name: str) -> str:
    """A name as the server keys it: dnspython's text form (spaces and other odd characters
    escaped, as in the names of incoming queries), lower case, without the final dot."""
    try:
        name = dns.name.from_text(name.strip()).to_text(omit_final_dot=True)
    except dns.exception.DNSException:
        pass
    return name.strip().rstrip(".").lower()


def _has_edns(wire: bytes) -> bool:
    try:
        return dns.message.from_wire(wire).edns >= 0
    except Exception:
        return False


def _truncated(wire: bytes) -> bytes:
    query = dns.message.from_wire(wire)
    resp = dns.message.make_response(query)
    resp.flags |= dns.flags.TC
    return resp.to_wire()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf


def dkimpy_dnsfunc(address: str):
    """A ``dnsfunc`` for dkimpy's verifiers that asks the test server at ``address`` (HOST:PORT)
    through a plain synchronous dnspython resolver: the independent implementation stays
    independent of our resolver."""
    import dns.resolver
    host, port = address.rsplit(":", 1)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = [host], int(port), 2.0

    def lookup(name: bytes, timeout=5):
        try:
            answer = resolver.resolve(name.decode(), "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer.rrset[0].strings)
    return lookup
