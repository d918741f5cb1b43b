"""Mutation fuzzing of every parser that reads what a sender or a DNS zone wrote (issue 15, item 2).

The From header (RFC 5322 addresses, RFC 2047 encoded words, IDNA), DKIM-Signature, ARC-Seal and
ARC-Message-Signature tag lists, DKIM key records, whole messages through DKIM verification and
ARC validation, SPF records (their grammar, and check_host() through pyspf), DMARC records and
Message.parse.  Seeds are valid, real-looking inputs (built here, signed with fixed Ed25519 keys,
plus the public conformance data when it is present); each input is a seed with a few byte
mutations: bit flips, inserted bytes and grammar tokens, deletions, duplicated and spliced
slices, 8-bit and broken UTF-8, huge repetitions.

What must hold for every input: nothing escapes the public function except its documented
error (AddressError, DkimSyntaxError, KeyRecordError, which callers turn into ``permerror``;
none at all for the functions that return verdicts), SPF never answers with an "internal
error" (a temperror that would tempfail the message on every retry), and each call returns
within MAX_SECONDS_PER_INPUT.  Deterministic: one fixed seed; about 160,000 inputs in all,
well under a minute.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
import traceback
import zlib
from typing import Callable, Iterable, Iterator

from cryptography.hazmat.primitives.asymmetric import ed25519

from authfilter import dkimcore, dmarcrecord, spfrecord
from authfilter.addresses import AddressError, author_addresses, normalize_domain
from authfilter.checks import arc as arc_check
from authfilter.checks import dkim as dkim_check
from authfilter.checks.dmarc import from_problem
from authfilter.checks.spf import RESULTS, check_spf
from authfilter.config import DkimConfig
from authfilter.dkimcore import DkimSyntaxError, KeyRecordError
from authfilter.dns import OK, DnsAnswer, StaticResolver
from authfilter.message import Message, header_limit_problem, remove_from_head, removal_of, unfold
from authfilter.results import ArcResult, SessionFacts
from authfilter.signing.arc_seal import ArcSealer
from authfilter.signing.dkim_sign import HeaderPolicy, Signer
from authfilter.signing.keys import SigningKey
from authfilter.signing.table import SigningTable, TableKey
from tests.conftest import TESTDATA

# For exploring beyond CI: AUTHFILTER_FUZZ_SEED=7 AUTHFILTER_FUZZ_SCALE=10 pytest -s this file
SEED = int(os.environ.get("AUTHFILTER_FUZZ_SEED", "152026"))
SCALE = float(os.environ.get("AUTHFILTER_FUZZ_SCALE", "1"))
MAX_SECONDS_PER_INPUT = 2.0        # the largest input takes a few hundred ms where it is slowest
MAX_INPUT = 128 * 1024            # a quadratic parse of a 20 KB input took 10 s
NOW = 1_790_000_000                # the signatures' t=; verification runs at this time

COUNTS = {name: int(count * SCALE) for name, count in {
    "from": 30_000, "domain": 8_000, "dkim-tags": 20_000, "key-record": 12_000,
    "dkim-message": 6_000, "arc-message": 5_000, "spf-record": 20_000, "spf-check": 5_000,
    "dmarc-record": 20_000, "message": 12_000}.items()}


def test_at_least_100000_inputs_in_all():
    assert sum(COUNTS.values()) >= 100_000 * min(SCALE, 1)


# -- mutations ---------------------------------------------------------------------------------
TOKENS = [b"\x00", b"\r", b"\n", b"\r\n", b"\r\n ", b"\r\n\t", b"\t", b" ", b";", b"=", b":",
          b",", b"<", b">", b"@", b'"', b"(", b")", b"\\", b".", b"..", b"[", b"]", b"%", b"{",
          b"}", b"/", b"//", b"?", b"=?", b"?=", b"?q?", b"?B?", b"-", b"_", b"+", b"!", b"~",
          b"\x7f", b"\x80", b"\xa7", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
          "é".encode(), "ß".encode(), "\u202e".encode(), "\U0001f600".encode(), "\u3002".encode(),
          "²".encode(), "١".encode(), "٣".encode(), "K".encode(), "ı".encode(),
          b"xn--", b"xn--zz", b"xn--bcher-kva", b"0", b"00", b"-1", b"99999999999999999999",
          b"4294967296", b"=00", b"=ZZ", b"==", b"A===", b"utf-8", b"ut\xa7-8", b"utf-7",
          b"iso-2022-jp", b"unknown-8bit", b"idna", b"punycode", b"zlib", b"rot13"]


def mutate(rng: random.Random, data: bytes, pool: list[bytes], tokens: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5, 8))):
        op = rng.randrange(10)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:                                    # flip a bit
            i = min(pos, len(out) - 1)
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1:                                          # insert any byte
            out[pos:pos] = bytes([rng.randrange(256)])
        elif op in (2, 3):                                     # insert a token of the grammar
            out[pos:pos] = rng.choice(tokens if op == 2 and tokens else TOKENS)
        elif op == 4 and out:                                  # delete a slice
            del out[pos:pos + rng.choice((1, 1, 2, 4, 16, 64))]
        elif op == 5 and out:                                  # duplicate a slice
            start = rng.randrange(len(out))
            out[pos:pos] = out[start:start + rng.choice((1, 3, 8, 32, 128))]
        elif op == 6:                                          # splice with another input
            other = rng.choice(pool)
            start = rng.randrange(len(other) + 1)
            out[pos:] = other[start:start + rng.randrange(1, 256)] + out[pos:pos + rng.randrange(256)]
        elif op == 7 and out:                                  # 8-bit byte
            out[min(pos, len(out) - 1)] = rng.randrange(0x80, 0x100)
        elif op == 8 and out:                                  # overwrite with a token
            token = rng.choice(tokens or TOKENS)
            out[pos:pos + len(token)] = token
        elif op == 9 and rng.random() < 0.2:                   # huge repetition, in place
            piece = bytes(out[pos:pos + rng.choice((1, 1, 2, 4, 12))]) or rng.choice(TOKENS)
            times = rng.choice((100, 1000, 5000, 20_000))
            out[pos:pos] = piece * min(times, MAX_INPUT // len(piece))
    return bytes(out[:MAX_INPUT])


def inputs(name: str, seeds: list[bytes], tokens: Iterable[bytes] = ()) -> Iterator[bytes]:
    """COUNTS[name] inputs: the seeds, then mutants of the seeds and of earlier mutants."""
    rng = random.Random(SEED * 1_000_003 + zlib.crc32(name.encode()))
    pool, tokens = list(seeds), list(tokens)
    for i in range(COUNTS[name]):
        if i < len(seeds):
            yield seeds[i]
            continue
        out = mutate(rng, rng.choice(pool), pool, tokens)
        if len(out) < 4096 and rng.random() < 0.1:             # keep some: deeper mutants
            if len(pool) < 600:
                pool.append(out)
            else:
                pool[rng.randrange(len(seeds), len(pool))] = out
        yield out


def fuzz(name: str, seeds: list[bytes], call: Callable[[bytes], object],
         allowed: tuple[type[BaseException], ...] = (), tokens: Iterable[bytes] = ()) -> None:
    """``call`` on every input; fails naming the first inputs that raised something other
    than ``allowed`` or took longer than MAX_SECONDS_PER_INPUT."""
    failures: list[str] = []
    slowest = (0.0, b"")
    began = time.perf_counter()
    for data in inputs(name, seeds, tokens):
        start = time.perf_counter()
        try:
            call(data)
        except allowed:
            pass
        except Exception:
            failures.append(f"{data[:300]!r} ({len(data)} bytes):\n{traceback.format_exc(limit=-3)}")
            if len(failures) >= 3:
                break
        elapsed = time.perf_counter() - start
        if elapsed > slowest[0]:
            slowest = (elapsed, data)
    took = time.perf_counter() - began
    print(f"\n{name}: {COUNTS[name]} inputs in {took:.1f} s ({COUNTS[name] / took:.0f}/s), "
          f"slowest {slowest[0] * 1000:.1f} ms ({len(slowest[1])} bytes)")
    assert not failures, f"{name}: {len(failures)} input(s) raised:\n" + "\n".join(failures)
    assert slowest[0] < MAX_SECONDS_PER_INPUT, \
        f"{name}: {slowest[0]:.2f} s for {slowest[1][:200]!r} ({len(slowest[1])} bytes)"


# -- seeds: keys and signed messages -----------------------------------------------------------
def ed25519_key(n: int) -> SigningKey:
    return SigningKey("ed25519-sha256", ed25519.Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


DKIM_KEY, ARC_KEY_1, ARC_KEY_2 = ed25519_key(1), ed25519_key(2), ed25519_key(3)
RSA_SPKI = ("MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDWtkFBI6ls19HueXkq6eoqC8wgh3sfm8Md+xy3htz+TQNr+1KG"
            "D7d4BWguHPNkvMvM3pKjfK7VUlS5zis+UIaWml7V1f03Th9/ve6YnmdFL8Q3e8FBMFhfD0aCvtC+GiiQdINvDC4S"
            "oXo1bs5T/kBd2PwJ8fohx+fPJE1sSc7SnwIDAQAB")
RSA_PKCS1 = ("MIGJAoGBANa2QUEjqWzX0e55eSrp6ioLzCCHex+bwx37HLeG3P5NA2v7UoYPt3gFaC4c82S8y8zekqN8rtVSVLnO"
             "Kz5QhpaaXtXV/TdOH3+97pieZ0UvxDd7wUEwWF8PRoK+0L4aKJB0g28MLhKhejVuzlP+QF3Y/Anx+iHH588kTWxJ"
             "ztKfAgMBAAE=")

MESSAGES = [
    b"From: Alice Example <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hello\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHello.\r\n",
    b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>\r\nTo: a@example.net,\r\n\tb@example.net\r\n"
    b"Subject: =?iso-8859-1?b?SGFsbPY=?=\r\n folded\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n.dot line\r\n  trailing  \t\r\n\r\n\r\n",
    b"From: alice@example.org\nSubject: bare LF\n\nline one\nline two\n",
    b"From: \"Example, Alice\" <alice@example.org>\r\nReply-To: list@example.net\r\n"
    b"List-Id: <list.example.net>\r\nSubject: 8-bit \xc3\xa9\r\n\r\n\xe9t\xe9\r\n",
]


def signed_messages() -> list[bytes]:
    out = []
    for canon in ("relaxed/relaxed", "simple/simple", "relaxed/simple"):
        signer = Signer(SigningTable([TableKey("example.org", "fz", DKIM_KEY, True, ("example.org",))]),
                        HeaderPolicy(["from", "to", "subject", "date", "message-id", "mime-version",
                                      "content-type", "reply-to", "list-id"], ["from"]), canon)
        for raw in MESSAGES:
            out.append(signer.sign_message(raw, now=NOW).message)
    return out


def sealed_messages() -> list[bytes]:
    first = ArcSealer("forwarder.example", "arc1", ARC_KEY_1, ["from", "to", "subject", "dkim-signature"])
    second = ArcSealer("list.example", "arc2", ARC_KEY_2, ["from", "subject", "list-id"])
    out = []
    for raw in signed_messages()[:4] + MESSAGES[:2]:
        once = first.seal_message(raw, "forwarder.example; dkim=pass header.d=example.org",
                                  ArcResult("none"), now=NOW).message
        twice = second.seal_message(once, "list.example; arc=pass; dkim=pass", ArcResult("pass"),
                                    now=NOW + 60).message
        out += [once, twice]
    return out


SIGNED = signed_messages()
SEALED = sealed_messages()
KEY_ANSWERS = {name: DnsAnswer(name, "TXT", OK, (key.dns_record().encode(),))
               for name, key in (("fz._domainkey.example.org", DKIM_KEY),
                                 ("arc1._domainkey.forwarder.example", ARC_KEY_1),
                                 ("arc2._domainkey.list.example", ARC_KEY_2))}


def header_values(messages: list[bytes], names: tuple[bytes, ...]) -> list[bytes]:
    out = []
    for raw in messages:
        m = Message.parse(raw)
        for name, value in m.headers:
            if name.lower() in names:
                out.append(value)
    return out


def corpus_dkim_messages() -> tuple[list[bytes], dict[str, DnsAnswer]]:
    """Mail::DKIM corpus messages and the key records of FAKE_DNS.dat, when present."""
    folder = TESTDATA / "dkim-corpus"
    if not folder.is_dir():
        return [], {}
    answers = {}
    for line in (folder / "FAKE_DNS.dat").read_text(errors="replace").splitlines():
        name, _, record = line.partition(" ")
        if name and not name.startswith("#") and record.strip() != "~~":
            answers[name.lower()] = DnsAnswer(name.lower(), "TXT", OK, (record.strip().encode(),))
    messages = [p.read_bytes() for p in sorted(folder.glob("*.txt"))
                if p.name.startswith(("good_", "bad_", "multiple_"))][:20]
    return messages, answers


CORPUS_MESSAGES, CORPUS_KEYS = corpus_dkim_messages()


# -- From, RFC 2047, IDNA ----------------------------------------------------------------------
FROM_SEEDS = [
    b" alice@example.org\r\n",
    b" Alice Example <alice@example.org>\r\n",
    b' "Example, Alice (CEO)" <alice@example.org>\r\n',
    b" =?utf-8?q?Al=C3=AFce_Ex?= <alice@example.org>\r\n",
    b" =?iso-8859-1?b?QWxpY2U=?= =?utf-8?B?w6k=?= <alice@example.org>\r\n",
    b" =?ut\xa7-8?q?x?= <a@b.example>\r\n",                   # issue 15: raised CharsetError
    b" =?unknown-8bit?q?=E9?= =?utf-7?q?+AOk-?= <a@b.example>\r\n",
    b" John Q. Public <john.q.public@example.com>, (comment (nested) \\) ) bob@example.net\r\n",
    b" undisclosed-recipients:;\r\n",
    b" Team: alice@example.org, Bob <bob@example.net>;, carol@example.com\r\n",
    b" <@relay.example,@other.example:user@example.com>\r\n",
    b' "quoted\\"pair"@example.org\r\n',
    b" alice@xn--bcher-kva.example\r\n",
    " Jörg <jörg@bücher.example>\r\n".encode(),
    b" alice @ example . org (comment)\r\n",
    b" Alice\r\n <alice@example.org>\r\n",
    b" alice@[192.0.2.1]\r\n",
    b" a@b.example, , c@d.example.,\r\n",
    b" \xe9t\xe9 <alice@example.org>\r\n",
]
FROM_TOKENS = [b"=?utf-8?q?", b"=?iso-8859-1?b?", b"?=", b"@example.org", b"<", b">", b'"', b"(",
               b")", b":", b";", b",", b"\\", b"xn--", b".", b"[", b"]"]


def check_from(value: bytes) -> None:
    authors = author_addresses([value])
    from_problem(authors)
    authors.domains
    if len(value) % 7 == 0:                     # sometimes as one of two From fields
        from_problem(author_addresses([value, FROM_SEEDS[1]]))


def test_from_header_fields():
    fuzz("from", FROM_SEEDS, check_from, tokens=FROM_TOKENS)


DOMAIN_SEEDS = [b"example.org", b"Example.ORG.", b"xn--bcher-kva.example", "bücher.example".encode(),
                b"_dmarc.ex_ample.org", b"a" * 63 + b".org", b"sub.sub.example.co.uk",
                "例え.テスト".encode(), b"xn--r8jz45g.xn--zckzah", "ＥＸＡＭＰＬＥ.org".encode()]


def test_domains():
    fuzz("domain", DOMAIN_SEEDS,
         lambda data: normalize_domain(data.decode("utf-8", "surrogateescape")), (AddressError,))


# -- DKIM and ARC ----------------------------------------------------------------------------------
SIGNATURE_SEEDS = header_values(SIGNED + SEALED, (b"dkim-signature", b"arc-seal", b"arc-message-signature")) + [
    b" v=1; a=rsa-sha256; c=relaxed; d=example.org; s=sel; l=0; q=dns/txt; t=1; x=2;\r\n"
    b"\ti=user=40sub.example.org; z=From:a=40b|To:c; h=from : to : from; bh=AAAA; b=AA AA\r\n",
    b" i=1; a=rsa-sha256; cv=none; d=example.org; s=sel; t=1; b=QUJD;",
    b" v=1; a=rsa-sha1; d=example.org; s=sel; h=From; bh=; b=AAAA",
]
SIGNATURE_TOKENS = [b"v=1", b"a=rsa-sha256", b"a=ed25519-sha256", b"c=simple/relaxed", b"d=",
                    b"s=", b"h=from:to", b"bh=", b"b=", b"l=", b"t=", b"x=", b"i=", b"i=1",
                    b"cv=pass", b"q=dns/txt", b"z=", b";", b"=", b"\r\n\t"]


def check_tags(value: bytes) -> None:
    try:
        dkimcore.parse_tag_list(value)
    except DkimSyntaxError:
        pass
    for kind in (dkimcore.DKIM, dkimcore.AMS, dkimcore.AS):
        try:
            sig = dkimcore.parse_signature(value, kind)
        except DkimSyntaxError:
            continue
        sig.key_name
    dkimcore.remove_b_value(value)


def test_dkim_and_arc_signature_tag_lists():
    fuzz("dkim-tags", SIGNATURE_SEEDS, check_tags, tokens=SIGNATURE_TOKENS)


KEY_SEEDS = [k.dns_record().encode() for k in (DKIM_KEY, ARC_KEY_1)] + [
    f"v=DKIM1; k=rsa; p={RSA_SPKI}".encode(),
    f"v=DKIM1; p={RSA_PKCS1}".encode(),
    f"v=DKIM1; k=rsa; t=y:s; h=sha256:sha1; s=email:*; n=notes; p={RSA_SPKI[:60]} {RSA_SPKI[60:]}".encode(),
    b"v=DKIM1; p=",
    b"k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
] + [a.records[0] for a in list(CORPUS_KEYS.values())[:20]]
KEY_TOKENS = [b"v=DKIM1", b"k=rsa", b"k=ed25519", b"p=", b"t=y", b"t=s", b"h=sha256", b"s=email",
              b"MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQ", b"=", b";"]


def check_key_record(record: bytes) -> None:
    try:
        dkimcore.parse_key_record(record)
    except KeyRecordError:
        pass
    dkimcore.select_key_record([record, b"google-site-verification=x"])


def test_dkim_key_records():
    fuzz("key-record", KEY_SEEDS, check_key_record, (KeyRecordError,), KEY_TOKENS)


DKIM_SETTINGS = DkimConfig()
MESSAGE_TOKENS = [b"\r\nDKIM-Signature: v=1; a=ed25519-sha256; d=example.org; s=fz; h=from; bh=; b=",
                  b"\r\nFrom: ", b"\r\nARC-Seal: i=2; a=ed25519-sha256; cv=pass; d=x; s=y; b=",
                  b"\r\nARC-Authentication-Results: i=1; x; dkim=pass", b"\r\n\r\n", b"l=1; ",
                  b"h=from:from:subject;", b"c=simple/simple;", b"i=3;", b"i=51;"]


def check_dkim_message(raw: bytes) -> None:
    message = Message.parse(raw)
    dkim_check.key_names(message, DKIM_SETTINGS.max_signatures)
    keys = {**CORPUS_KEYS, **KEY_ANSWERS}
    for result in dkim_check.verify_signatures(message, keys, DKIM_SETTINGS, NOW + 30):
        assert result.result in ("pass", "fail", "neutral", "policy", "temperror", "permerror"), result


def test_messages_through_dkim_verification():
    assert all(r.result == "pass" for raw in SIGNED
               for r in dkim_check.verify_signatures(Message.parse(raw), KEY_ANSWERS, DKIM_SETTINGS, NOW + 30))
    fuzz("dkim-message", SIGNED + CORPUS_MESSAGES, check_dkim_message, tokens=MESSAGE_TOKENS)


def check_arc_message(raw: bytes) -> None:
    message = Message.parse(raw)
    arc_check.key_names(message)
    result = arc_check.validate_chain(message, KEY_ANSWERS, NOW + 120)
    assert result.result in ("none", "pass", "fail"), result


def test_messages_through_arc_validation():
    assert [arc_check.validate_chain(Message.parse(raw), KEY_ANSWERS, NOW + 120).result
            for raw in SEALED] == ["pass"] * len(SEALED)
    fuzz("arc-message", SEALED, check_arc_message, tokens=MESSAGE_TOKENS)


# -- SPF ---------------------------------------------------------------------------------------
def suite_spf_records() -> list[bytes]:
    path = TESTDATA / "spf" / "rfc7208-tests.yml"
    if not path.exists():
        return []
    import yaml
    found = []
    for scenario in yaml.safe_load_all(path.read_bytes()):
        for entries in scenario.get("zonedata", {}).values():
            for entry in entries:
                if isinstance(entry, dict):
                    for value in entry.values():
                        text = value if isinstance(value, str) else \
                            "".join(v for v in value if isinstance(v, str)) if isinstance(value, list) else ""
                        if text.lower().startswith("v=spf1"):
                            found.append(text.encode("utf-8", "replace"))
    return sorted(set(found))[:150]


SPF_SEEDS = [
    b"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx/24 include:_spf.example.org -all",
    b"v=spf1 a:%{d}.example.org exists:%{ir}.%{l1r+-}._spf.%{d} ptr ?all",
    b"v=spf1 redirect=_spf.example.org",
    b"v=spf1 exp=explain.%{d} include:_spf.example.org ~all",
    b"v=spf1 a//64 mx:mail.example.org/28//64 ip4:192.0.2.1 +all",
    b"v=spf1 -ip4:192.0.2.1/32 ?exists:%{i}.%{h}.%{v}.%{c}.%{r}.%{t}.%{p}.example.org all",
    b"v=spf1 include:%{o}._spf.example.org moo=bar -all",
    b"v=spf1",
] + suite_spf_records()
SPF_TOKENS = [b" ip4:", b" ip6:", b" a:", b" mx:", b" ptr:", b" include:", b" exists:", b" redirect=",
              b" exp=", b" -all", b" ~all", b"?all", b"%{i}", b"%{ir}", b"%{d2}", b"%{l-}", b"%{p}",
              b"%{h}", b"%%", b"%_", b"%-", b"/0", b"/33", b"//129", b"//0", b"::", b"::ffff:192.0.2.1",
              b"_spf.example.org", b"example.org", b"v=spf1 "]


def check_spf_record(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    for record in spfrecord.spf_records([data, text]):
        spfrecord.final_all(record)
        for term in spfrecord.terms(record):
            parsed = spfrecord.parse_term(term)
            spfrecord.has_macro(term)
            if isinstance(parsed, spfrecord.Mechanism):
                if parsed.name in ("ip4", "ip6"):
                    spfrecord.ip_problem(parsed.name, parsed.rest)
                elif parsed.name in spfrecord.DNS_MECHANISMS:
                    target = spfrecord.domain_target(parsed)
                    if target is not None:
                        spec, cidr = target
                        if spec is not None:
                            spfrecord.domain_spec_problem(spec)
                        spfrecord.cidr_problem(cidr)
            else:
                spfrecord.domain_spec_problem(parsed.value)


def test_spf_record_grammar():
    fuzz("spf-record", SPF_SEEDS, check_spf_record, tokens=SPF_TOKENS)


SPF_ZONE = {("_spf.example.org", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
            ("example.org", "A"): ["192.0.2.1"], ("example.org", "MX"): [(10, "mail.example.org")],
            ("mail.example.org", "A"): ["192.0.2.2"], ("1.2.0.192.in-addr.arpa", "PTR"): ["mail.example.org"],
            ("explain.example.org", "TXT"): ["%{i} is not one of %{d}'s servers"]}
FACTS = SessionFacts.create("192.0.2.1", "mail.example.org", "alice@example.org")


def test_spf_check_host_through_pyspf():
    """check_host() with the mutated record published at example.org: a result word, and never
    "internal error" (a pyspf exception turned into temperror would tempfail the message on
    every retry, as the malformed encoded word did)."""
    def check(record: bytes) -> None:
        resolver = StaticResolver({**SPF_ZONE, ("example.org", "TXT"): [record]})
        result = loop.run_until_complete(check_spf(FACTS, resolver, timeout=5.0))
        assert result.result in RESULTS, result
        assert not (result.reason or "").startswith("internal error"), result

    loop = asyncio.new_event_loop()
    try:
        fuzz("spf-check", SPF_SEEDS, check, tokens=SPF_TOKENS)
    finally:
        loop.close()


# -- DMARC -------------------------------------------------------------------------------------
DMARC_SEEDS = [
    b"v=DMARC1; p=reject; sp=quarantine; np=reject; adkim=s; aspf=r; pct=50; fo=1:d:s; rf=afrf; "
    b"ri=3600; rua=mailto:a@example.org,mailto:b@example.net!10m; ruf=mailto:f@example.org; psd=n; t=y",
    b"v=DMARC1;p=none",
    b"v=DMARC1; p=quarantine; rua=mailto:dmarc@example.org",
    b"V = DMARC1 ; P = Reject ; SP=none; unknown=tag;; ",
    b"v=DMARC1; p=bogus; rua=mailto:x@example.org",
    b"v=DMARC1; psd=y; np=reject",
]
DMARC_TOKENS = [b"; p=", b"; sp=", b"; np=", b"; adkim=", b"; aspf=", b"; fo=", b"; rua=mailto:",
                b"; ruf=", b"; pct=", b"; ri=", b"; rf=", b"; psd=", b"; t=", b"!10m", b",", b"%2C",
                b"reject", b"none", b"quarantine", b"v=DMARC1"]


def check_dmarc_record(data: bytes) -> None:
    for text in (data, data.decode("utf-8", "surrogateescape")):
        dmarcrecord.is_dmarc_record(text)
        for mode in dmarcrecord.MODES:
            record = dmarcrecord.parse_record(text, mode=mode)
            if isinstance(record, dmarcrecord.DmarcRecord):
                for relation in ("self", "subdomain", "nonexistent"):
                    assert record.policy_for(relation) in dmarcrecord.POLICIES
                record.needs_existence_check
            dmarcrecord.select_record([text, b"v=spf1 -all"], mode=mode)


def test_dmarc_records():
    fuzz("dmarc-record", DMARC_SEEDS, check_dmarc_record, tokens=DMARC_TOKENS)


# -- Message.parse and the header edits --------------------------------------------------------
def check_message(raw: bytes) -> None:
    message = Message.parse(raw)
    assert message.header_length <= len(message.raw)
    header_limit_problem(message.raw)
    Message.parse(raw, crlf_only=True)
    for value in message.get_all(b"from"):
        unfold(value)
    from_problem(author_addresses(message.get_all(b"from")))
    if message.headers:
        remove_from_head(message.raw[:message.header_length], removal_of(message, [0]))


def test_message_parse():
    fuzz("message", MESSAGES + SIGNED[:4] + SEALED[:2], check_message, tokens=MESSAGE_TOKENS)
