"""The shared DKIM pieces: tag lists, signature fields, key records, header selection."""
import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from authfilter import dkimcore
from authfilter.dkimcore import DkimSyntaxError, HeaderIndex, KeyRecordError

# RFC 8463 Appendix A keys (also in dkimpy's test data).
ED25519_P = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
RSA_1024_P = ("MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY"
              "/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyV"
              "YLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB")


# -- tag lists (RFC 6376 section 3.2) ----------------------------------------------------------
def test_tag_list_whitespace_folding_and_trailing_semicolon():
    tags = dkimcore.parse_tag_list(b" v = 1 ;\r\n\ta=rsa-sha256; h=from : to;\r\n b=ab\r\n cd ;\r\n")
    assert tags == {"v": "1", "a": "rsa-sha256", "h": "from : to", "b": "ab cd"}


def test_tag_list_keeps_order_and_allows_empty_values_and_utf8():
    tags = dkimcore.parse_tag_list("v=DKIM1; n=; i=jos\u00e9@example.com".encode())
    assert list(tags) == ["v", "n", "i"] and tags["n"] == "" and tags["i"] == "jos\u00e9@example.com"


@pytest.mark.parametrize("text, problem", [
    (b"a=1; a=2", "duplicate"),
    (b"a=1;; b=2", "empty tag"),
    (b"a=1; =2", "malformed"),
    (b"1a=1", "malformed"),
    (b"a", "malformed"),
    (b"a=b\x00c", "malformed"),
    (b"a=b\r\nc=d", "line break"),
    (b"a=x;\rb=y", "line break"),
])
def test_tag_list_errors(text, problem):
    with pytest.raises(DkimSyntaxError, match=problem):
        dkimcore.parse_tag_list(text)


def test_tag_names_are_case_sensitive():
    assert dkimcore.parse_tag_list(b"V=1; v=1") == {"V": "1", "v": "1"}


def test_remove_b_value_keeps_bh_and_everything_else():
    value = b" v=1; bh=abc=; b=xy\r\n z; d=example.com\r\n"
    assert dkimcore.remove_b_value(value) == b" v=1; bh=abc=; b=; d=example.com\r\n"
    assert dkimcore.remove_b_value(b"b = sig ;x=1") == b"b =;x=1"


def test_quoted_printable_identity():
    assert dkimcore.decode_dkim_quoted_printable("jlong=40messiah.edu") == "jlong@messiah.edu"
    assert dkimcore.decode_dkim_quoted_printable("=C3=A9@example.com") == "\u00e9@example.com"
    with pytest.raises(DkimSyntaxError):
        dkimcore.decode_dkim_quoted_printable("a=4@example.com")


# -- signature fields (section 3.5) ------------------------------------------------------------
BASE = {"v": "1", "a": "rsa-sha256", "b": "YWJj", "bh": "YWJj", "d": "Example.COM", "h": "From:To",
        "s": "sel"}


def sig(**changes):
    tags = dict(BASE)
    for k, v in changes.items():
        if v is None:
            tags.pop(k, None)
        else:
            tags[k] = v
    value = "; ".join(f"{k}={v}" for k, v in tags.items()).encode()
    return dkimcore.parse_signature(value)


def test_signature_defaults():
    s = sig()
    assert (s.domain, s.selector, s.identity, s.header_canon, s.body_canon) == \
        ("example.com", "sel", "@example.com", "simple", "simple")
    assert s.signed_headers == ("from", "to") and s.key_name == "sel._domainkey.example.com"
    assert s.header_b == "YWJj" and s.signature == b"abc"


@pytest.mark.parametrize("changes, problem", [
    ({"v": None}, "missing required tag v="),
    ({"bh": None, "h": None}, "missing required tags bh= h="),
    ({"v": "2"}, "unsupported version"),
    ({"a": "rsa-md5"}, "unsupported algorithm"),
    ({"a": ""}, "unsupported algorithm"),
    ({"c": "future"}, "canonicalization"),
    ({"d": ""}, "not a domain"),
    ({"d": "exa mple.com"}, "not a domain"),
    ({"d": "ex..com"}, "not a domain"),
    ({"s": ""}, "selector"),
    ({"b": "!!!"}, "base64"),
    ({"b": ""}, "b= is empty"),
    ({"bh": "YWJ"}, "base64"),
    ({"h": "to:subject"}, "From"),
    ({"h": "from::to"}, "header field names"),
    ({"h": ""}, "header field names"),
    ({"i": "user@example.net"}, "not in d="),
    ({"i": "user@notexample.com"}, "not in d="),
    ({"i": "userexample.com"}, "not in d="),
    ({"q": "http"}, "query method"),
    ({"l": "12a"}, "l="),
    ({"t": "soon"}, "t="),
    ({"t": "100", "x": "99"}, "x= is earlier than t="),
])
def test_signature_errors(changes, problem):
    with pytest.raises(DkimSyntaxError, match=problem):
        sig(**changes)


def test_signature_identity_subdomain_and_quoted_printable():
    assert sig(i="user=40mail.example.com").identity == "user@mail.example.com"
    assert sig(i="@EXAMPLE.com").identity == "@EXAMPLE.com"


def test_signature_optional_tags():
    s = sig(l="0", t="1", x="2", q="dns/txt:other/x", c="relaxed", z="From:x")
    assert (s.length, s.timestamp, s.expiration, s.header_canon, s.body_canon) == (0, 1, 2, "relaxed", "simple")


def test_arc_seal_and_ams_rules():
    seal = b"i=2; a=rsa-sha256; b=YWJj; cv=pass; d=example.org; s=k"
    s = dkimcore.parse_signature(seal, dkimcore.AS)
    assert (s.instance, s.chain_status, s.header_canon) == (2, "pass", "relaxed")
    with pytest.raises(DkimSyntaxError, match="h= is not allowed"):
        dkimcore.parse_signature(seal + b"; h=from", dkimcore.AS)
    with pytest.raises(DkimSyntaxError, match="instance"):
        dkimcore.parse_signature(seal.replace(b"i=2", b"i=51"), dkimcore.AS)
    with pytest.raises(DkimSyntaxError, match="cv="):
        dkimcore.parse_signature(seal.replace(b"cv=pass", b"cv=maybe"), dkimcore.AS)
    ams = b"i=1; a=rsa-sha256; b=YWJj; bh=YWJj; d=example.org; s=k; h=to:subject"
    assert dkimcore.parse_signature(ams, dkimcore.AMS).signed_headers == ("to", "subject")
    with pytest.raises(DkimSyntaxError, match="ARC-Seal"):
        dkimcore.parse_signature(ams.replace(b"h=to", b"h=arc-seal:to"), dkimcore.AMS)


# -- key records (section 3.6.1) ---------------------------------------------------------------
def test_key_records_rsa_and_ed25519():
    rsa_key = dkimcore.parse_key_record(f"v=DKIM1; k=rsa; h=sha256:sha1; t=y:s; p={RSA_1024_P}".encode())
    assert (rsa_key.key_type, rsa_key.bits, rsa_key.hashes, rsa_key.testing, rsa_key.strict) == \
        ("rsa", 1024, frozenset({"sha256", "sha1"}), True, True)
    ed = dkimcore.parse_key_record(f"v=DKIM1; k=ed25519; p={ED25519_P}".encode())
    assert (ed.key_type, ed.bits, ed.hashes, ed.testing) == ("ed25519", 256, None, False)


def test_key_record_folded_p_and_bare_rsapublickey():
    folded = RSA_1024_P[:50] + " \t" + RSA_1024_P[50:]
    assert dkimcore.parse_key_record(f"p={folded}".encode()).bits == 1024
    spki = base64.b64decode(RSA_1024_P)
    key = serialization.load_der_public_key(spki)
    pkcs1 = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    assert dkimcore.parse_key_record(b"p=" + base64.b64encode(pkcs1)).bits == 1024


@pytest.mark.parametrize("record, problem", [
    (b"v=DKIM1; k=rsa; p=", "revoked"),
    (b"k=rsa; v=DKIM1; p=" + RSA_1024_P.encode(), "v="),
    (b"v=DKIM2; p=" + RSA_1024_P.encode(), "v="),
    (b"v=DKIM1; k=dsa; p=" + RSA_1024_P.encode(), "key type"),
    (b"v=DKIM1; s=chat; p=" + RSA_1024_P.encode(), "not for email"),
    (b"v=DKIM1; k=rsa", "no p="),
    (b"v=DKIM1; p=AAAA", "not an RSA public key"),
    (b"v=DKIM1; p=@@@", "base64"),
    (b"v=DKIM1; t; p=" + RSA_1024_P.encode(), "syntax"),
    (b"v=DKIM1; k=ed25519; p=" + RSA_1024_P.encode(), "not 32"),
    (b"\x00\xff garbage", "syntax"),
    (b"v=spf1 -all", "v= is not DKIM1"),
])
def test_key_record_errors(record, problem):
    with pytest.raises(KeyRecordError, match=problem) as info:
        dkimcore.parse_key_record(record)
    assert info.value.revoked == (problem == "revoked")


def test_key_record_service_and_unknown_tags():
    record = f"v=DKIM1; s=web:email; x1=extra; n=notes; p={RSA_1024_P}".encode()
    assert dkimcore.parse_key_record(record).key_type == "rsa"


def test_select_key_record_among_txt_records():
    good = f"v=DKIM1; p={RSA_1024_P}".encode()
    other = f"v=DKIM1; k=ed25519; p={ED25519_P}".encode()
    assert dkimcore.select_key_record([b"v=spf1 -all", good, b"google-site-verification=x"]).bits == 1024
    with pytest.raises(KeyRecordError, match="2 key records"):
        dkimcore.select_key_record([good, other])
    with pytest.raises(KeyRecordError, match="revoked"):
        dkimcore.select_key_record([b"v=DKIM1; p=", b"v=spf1 -all"])
    with pytest.raises(KeyRecordError, match="none of 2"):
        dkimcore.select_key_record([b"hello", b"v=spf1 -all"])


def test_ed25519_verify_digest_is_over_the_sha256_digest():
    private = ed25519.Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = dkimcore.parse_key_record(b"k=ed25519; p=" + base64.b64encode(raw))
    digest = dkimcore.digest(b"header data", "sha256")
    assert dkimcore.verify_digest(key, "sha256", digest, private.sign(digest))
    assert not dkimcore.verify_digest(key, "sha256", digest, private.sign(b"header data"))
    assert not dkimcore.verify_digest(key, "sha256", digest, b"short")


# -- header selection (section 5.4.2) -----------------------------------------------------------
def test_header_selection_bottom_up_and_absent_names():
    headers = [(b"Received", b" 1\r\n"), (b"From", b" a\r\n"), (b"Received", b" 2\r\n"),
               (b"Subject", b" s\r\n")]
    index = HeaderIndex(headers)
    assert index.select(["received", "from", "received", "received", "cc"]) == \
        [headers[2], headers[1], headers[0]]
    assert index.select(["received"], hidden={2}) == [headers[0]]


def test_body_hashes_share_work_and_apply_l():
    bodies = dkimcore.BodyHashes(b"a  b\r\n\r\n")
    full = bodies.hash("relaxed", "sha256")
    assert full == dkimcore.digest(b"a b\r\n", "sha256")
    assert bodies.hash("relaxed", "sha256", 2) == dkimcore.digest(b"a ", "sha256")
    assert bodies.length("relaxed") == 5 and bodies.hash("relaxed", "sha256") is full


def test_remove_b_value_empties_the_first_b_tag_whatever_the_layout():
    """Checked against the tag grammar written as one regex (RFC 6376 s. 3.2: a tag starts
    at the beginning or after ";", with FWS around the name)."""
    import random
    import re
    reference = re.compile(rb"((?:^|;)[ \t\r\n]*b[ \t\r\n]*=)[^;]*")
    rng = random.Random(3007)
    alphabet = [b" ", b"\t", b"\r\n", b";", b"b", b"=", b"a", b"bh", b"x"]
    for _ in range(20000):
        value = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 14)))
        assert dkimcore.remove_b_value(value) == reference.sub(rb"\1", value, count=1), value
