"""Messages we sign verify with independent verifiers, keys served by the loopback DNS server.

Every sample of tests/unit/test_sign_samples.py (folded, long, 8-bit, empty body, bare LF ...)
is dual-signed (RSA-2048 and Ed25519) in each of the four canonicalizations, plus messages with
one signature only, and every signature is checked by:

* dkimpy (Python; its own canonicalization and crypto), DNS through a dnsfunc asking the
  loopback server;
* Mail::DKIM (Perl, ``libmail-dkim-perl``) through Net::DNS pointed at the loopback server;
  this version has no Ed25519, so it checks the RSA signatures;
* libopendkim (C, OpenDKIM's library, through ctypes), which resolves with the C library's
  resolver on port 53 only: it runs in a network and mount namespace of its own with a copy
  of the test DNS server on 127.0.0.1:53 and /etc/resolv.conf pointing there;
* our verifier, authfilter.checks.dkim, through the authfilter Resolver.

A tampered copy must fail in each of them, so a verifier that passes everything is caught.
"""
from __future__ import annotations

import asyncio
import ctypes.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from authfilter.checks.dkim import verify_dkim
from authfilter.config import DkimConfig
from authfilter.message import Message
from tests.dnsserver import dkimpy_dnsfunc
from tests.unit.test_sign_samples import (CANONICALIZATIONS, NOW, SAMPLES, key_of, make_signer,
                                          table_key)

ROOT = Path(__file__).resolve().parents[2]
SELECTORS = {"rsa1": "rsa-sha256", "ed1": "ed25519-sha256"}
TAMPERED = "tampered"


@pytest.fixture(scope="module")
def keys():
    return {"rsa1": key_of(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "ed1": key_of(ed25519.Ed25519PrivateKey.generate())}


@pytest.fixture(scope="module")
def signed(keys) -> dict[str, bytes]:
    """name -> signed message: each sample dual-signed in each canonicalization, single-key
    messages, and a tampered one that must fail everywhere."""
    out = {}
    both = [table_key(keys["rsa1"], "rsa1"), table_key(keys["ed1"], "ed1")]
    for canon in CANONICALIZATIONS:
        signer = make_signer(*both, canonicalization=canon)
        for sample, raw in SAMPLES.items():
            outcome = signer.sign_message(raw, now=NOW)
            assert outcome.skipped is None, (sample, outcome.skipped)
            out[f"{sample}-{canon.replace('/', '-')}"] = outcome.message
    for selector in SELECTORS:
        out[f"only-{selector}"] = make_signer(table_key(keys[selector], selector)).sign_message(
            SAMPLES["plain"], now=NOW).message
    out[TAMPERED] = out["plain-relaxed-relaxed"].replace(b"see you.", b"see you!")
    return out


def publish(zone, keys) -> dict[str, str]:
    records = {f"{s}._domainkey.example.com": keys[s].dns_record() for s in SELECTORS}
    for name, value in records.items():
        zone.add(name, "TXT", value)
    return records


def check_results(signed, results: dict[str, dict[str, str]], algorithms: set[str]) -> None:
    """``results``: message -> selector -> "pass"/other.  Every signature with an algorithm the
    verifier supports passes, except in the tampered message, where all fail."""
    problems = []
    for name, raw in signed.items():
        expected = {s for s in SELECTORS if f"s={s};".encode() in raw and SELECTORS[s] in algorithms}
        got = results.get(name, {})
        for selector in expected:
            ok = got.get(selector) == "pass"
            if ok == (name == TAMPERED):
                problems.append(f"{name} s={selector}: {got.get(selector, 'no result')}")
    assert not problems, problems


# -- dkimpy ------------------------------------------------------------------------------------
def test_dkimpy_verifies_every_signature(zone, keys, signed):
    publish(zone, keys)
    lookup = dkimpy_dnsfunc(zone.address)

    results = {}
    for name, raw in signed.items():
        verifier = dkim.DKIM(raw)
        count = sum(1 for n, _ in verifier.headers if n.lower() == b"dkim-signature")
        per_sig = {}
        for index in range(count):
            try:
                ok = verifier.verify(idx=index, dnsfunc=lookup)
            except dkim.DKIMException as exc:
                ok = exc
            per_sig[verifier.signature_fields[b"s"].decode()] = "pass" if ok is True else str(ok)
        results[name] = per_sig
    check_results(signed, results, {"rsa-sha256", "ed25519-sha256"})


# -- our verifier ------------------------------------------------------------------------------
def test_our_verifier_verifies_every_signature(zone, resolver, keys, signed):
    publish(zone, keys)

    async def verify_all():
        out = {}
        for name, raw in signed.items():
            found = await verify_dkim(Message.parse(raw), resolver, DkimConfig(), now=NOW + 60)
            out[name] = {r.selector: r.result if r.result != "pass" else "pass" for r in found}
        return out

    check_results(signed, asyncio.run(verify_all()), {"rsa-sha256", "ed25519-sha256"})


# -- Mail::DKIM --------------------------------------------------------------------------------
MAIL_DKIM_SCRIPT = r"""
use strict; use warnings;
use Mail::DKIM::Verifier; use Mail::DKIM::DNS; use Net::DNS::Resolver;
my ($host, $port, @files) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => [$host], port => $port,
    udp_timeout => 3, tcp_timeout => 3, retry => 1));
for my $file (@files) {
    open(my $fh, '<:raw', $file) or die "$file: $!";
    my $dkim = Mail::DKIM::Verifier->new();
    while (my $line = <$fh>) { $line =~ s/\r?\n\z/\015\012/; $dkim->PRINT($line); }
    $dkim->CLOSE;
    for my $sig ($dkim->signatures) {
        print join("\t", $file, $sig->selector, $sig->result, $sig->result_detail // ''), "\n";
    }
}
"""


def _mail_dkim_available() -> bool:
    return shutil.which("perl") is not None and subprocess.run(
        ["perl", "-MMail::DKIM::Verifier", "-MNet::DNS::Resolver", "-e", "1"],
        capture_output=True).returncode == 0


@pytest.mark.skipif(not _mail_dkim_available(), reason="Mail::DKIM (libmail-dkim-perl) not installed")
def test_mail_dkim_verifies_every_rsa_signature(zone, keys, signed, tmp_path):
    publish(zone, keys)
    script = tmp_path / "verify.pl"
    script.write_text(MAIL_DKIM_SCRIPT)
    files = {}
    for name, raw in signed.items():
        (tmp_path / f"{name}.eml").write_bytes(raw)
        files[str(tmp_path / f"{name}.eml")] = name
    host, port = zone.address.rsplit(":", 1)
    done = subprocess.run(["perl", str(script), host, port, *files], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results: dict[str, dict[str, str]] = {}
    for line in done.stdout.splitlines():
        path, selector, result, detail = line.split("\t")
        results.setdefault(files[path], {})[selector] = result if result == "pass" else detail
    # Mail::DKIM 1.2023x knows no Ed25519: it must say so rather than pass or fail it
    assert results["only-ed1"]["ed1"].startswith("invalid (unsupported algorithm")
    check_results(signed, results, {"rsa-sha256"})


# -- libopendkim -------------------------------------------------------------------------------
# Runs inside `unshare --net --mount`: loopback up, a copy of the test DNS server answering on
# 127.0.0.1:53 (libopendkim asks the C resolver, which cannot use another port), resolv.conf
# bind-mounted to point there, then every message through dkim_header/eoh/body/eom.
OPENDKIM_HELPER = r"""
import ctypes, json, socket, subprocess, sys, tempfile, threading
from ctypes import POINTER, byref, c_char_p, c_int, c_size_t, c_uint, c_void_p
sys.path.insert(0, sys.argv[1])
from tests.dnsserver import DnsTestServer

job = json.load(open(sys.argv[2]))
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
conf.write("nameserver 127.0.0.1\noptions edns0\n"); conf.close()
subprocess.run(["mount", "--bind", conf.name, "/etc/resolv.conf"], check=True)
server = DnsTestServer()
for name, value in job["records"].items():
    server.add(name, "TXT", value)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 53))
def serve():
    while True:
        data, peer = sock.recvfrom(65535)
        reply = server.answer(data)
        if reply:
            sock.sendto(reply, peer)
threading.Thread(target=serve, daemon=True).start()

lib = ctypes.CDLL(job["library"])
def fn(name, res, *args):
    f = getattr(lib, name); f.restype = res; f.argtypes = list(args); return f
dkim_init = fn("dkim_init", c_void_p, c_void_p, c_void_p)
dkim_verify = fn("dkim_verify", c_void_p, c_void_p, c_char_p, c_void_p, POINTER(c_int))
dkim_header = fn("dkim_header", c_int, c_void_p, c_char_p, c_size_t)
dkim_eoh = fn("dkim_eoh", c_int, c_void_p)
dkim_body = fn("dkim_body", c_int, c_void_p, c_char_p, c_size_t)
dkim_eom = fn("dkim_eom", c_int, c_void_p, c_void_p)
dkim_getsiglist = fn("dkim_getsiglist", c_int, c_void_p, POINTER(POINTER(c_void_p)), POINTER(c_int))
dkim_sig_getflags = fn("dkim_sig_getflags", c_uint, c_void_p)
dkim_sig_getbh = fn("dkim_sig_getbh", c_int, c_void_p)
dkim_sig_geterror = fn("dkim_sig_geterror", c_int, c_void_p)
dkim_sig_geterrorstr = fn("dkim_sig_geterrorstr", c_char_p, c_int)
dkim_sig_getselector = fn("dkim_sig_getselector", c_char_p, c_void_p)
dkim_free = fn("dkim_free", c_int, c_void_p)
PASSED, BH_MATCH = 0x04, 0

handle = dkim_init(None, None)
results = {}
for name, path in job["messages"].items():
    raw = open(path, "rb").read()
    head, _, body = raw.partition(b"\r\n\r\n")
    fields = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif line:
            fields.append(line)
    status = c_int()
    d = dkim_verify(handle, b"authfilter-test", None, byref(status))
    for f in fields:
        dkim_header(d, f, len(f))
    dkim_eoh(d)
    dkim_body(d, body, len(body))
    dkim_eom(d, None)
    sigs, count = POINTER(c_void_p)(), c_int()
    dkim_getsiglist(d, byref(sigs), byref(count))
    per_sig = {}
    for i in range(count.value):
        sig = sigs[i]
        ok = dkim_sig_getflags(sig) & PASSED and dkim_sig_getbh(sig) == BH_MATCH
        selector = dkim_sig_getselector(sig)
        error = dkim_sig_geterror(sig)
        per_sig[selector.decode() if selector else f"#{i}"] = "pass" if ok else \
            (dkim_sig_geterrorstr(error) or f"error {error}".encode()).decode() + \
            f" (flags {dkim_sig_getflags(sig):#x}, bh {dkim_sig_getbh(sig)})"
    dkim_free(d)
    results[name] = per_sig
print(json.dumps(results))
"""


def _opendkim_unavailable() -> str | None:
    library = ctypes.util.find_library("opendkim")
    if library is None:
        return "libopendkim (opendkim-tools) not installed"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip not installed"
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot create network namespaces here: {probe.stderr.decode().strip()}"
    return None


def test_libopendkim_verifies_every_signature(keys, signed, tmp_path):
    reason = _opendkim_unavailable()
    if reason:
        pytest.skip(reason)
    messages = {}
    for name, raw in signed.items():
        (tmp_path / f"{name}.eml").write_bytes(raw)
        messages[name] = str(tmp_path / f"{name}.eml")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({
        "library": ctypes.util.find_library("opendkim"),
        "records": {f"{s}._domainkey.example.com": keys[s].dns_record() for s in SELECTORS},
        "messages": messages}))
    done = subprocess.run(["unshare", "--net", "--mount", sys.executable, "-c", OPENDKIM_HELPER,
                           str(ROOT), str(job)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    check_results(signed, json.loads(done.stdout), {"rsa-sha256", "ed25519-sha256"})
