"""CPU cost of verifying one DKIM signature: authfilter vs dkimpy.

    python bench/bench_dkim.py [--repeat N]

Messages: ordinary text (76-character lines) of about 4 KB, 100 KB and 2 MB, plus a 2 MB body
made of whitespace runs (the pathological case for relaxed canonicalization).  Each carries one
RSA-2048 rsa-sha256 relaxed/relaxed signature made by dkimpy.  Keys come from a dict: no DNS.
Figures are the median CPU milliseconds (time.process_time) per verify.  "verify" is
verify_signatures on an already parsed Message (what the engine runs in its worker);
"+parse" adds Message.parse, which dkimpy's figure always includes (its rfc822_parse).
"""
from __future__ import annotations

import argparse
import base64
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from authfilter.checks.dkim import verify_signatures  # noqa: E402
from authfilter.config import DkimConfig  # noqa: E402
from authfilter.dns import DnsAnswer  # noqa: E402
from authfilter.message import Message  # noqa: E402

KEY_NAME = "bench._domainkey.example.com"


def text_body(size: int) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog, again and again, line %06d.\r\n"
    return b"".join(line % i for i in range(size // len(line % 0) + 1))[:size].rsplit(b"\r\n", 1)[0] + b"\r\n"


def whitespace_body(size: int) -> bytes:
    chunk = b"a \t  \t b   \t\t  c  \t \r\n \t \r\n"
    return chunk * (size // len(chunk))


def make_message(body: bytes, pem: bytes) -> bytes:
    msg = (b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: benchmark\r\n"
           b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\n\r\n" + body)
    return dkim.sign(msg, b"bench", b"example.com", pem, canonicalize=(b"relaxed", b"relaxed")) + msg


def cpu_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append((time.process_time() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=0, help="runs per case (default: by size)")
    args = parser.parse_args()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)
    keys = {KEY_NAME: DnsAnswer(KEY_NAME, "TXT", "ok", (record,))}
    settings = DkimConfig()
    now = time.time()

    def dnsfunc(name, timeout=5):
        return record

    cases = [("text 4 KB", text_body(4 * 1024), 400), ("text 100 KB", text_body(100 * 1024), 60),
             ("text 2 MB", text_body(2 * 1024 * 1024), 7),
             ("whitespace runs 2 MB", whitespace_body(2 * 1024 * 1024), 7)]
    print(f"{'message':<22} {'bytes':>9} {'verify ms':>10} {'+parse ms':>10} {'dkimpy ms':>10} "
          f"{'speed-up':>9}")
    for label, body, repeat in cases:
        raw = make_message(body, pem)
        repeat = args.repeat or repeat

        parsed = Message.parse(raw)

        def ours():
            results = verify_signatures(parsed, keys, settings, now)
            assert results[0].result == "pass", results

        def ours_with_parse():
            verify_signatures(Message.parse(raw), keys, settings, now)

        def theirs():
            assert dkim.verify(raw, dnsfunc=dnsfunc)

        ours(), theirs()
        a, p, b = cpu_ms(ours, repeat), cpu_ms(ours_with_parse, repeat), cpu_ms(theirs, repeat)
        print(f"{label:<22} {len(raw):>9} {a:>10.3f} {p:>10.3f} {b:>10.2f} {b / p:>8.1f}x")


if __name__ == "__main__":
    main()
