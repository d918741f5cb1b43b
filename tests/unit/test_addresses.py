"""RFC 5322 / 6532 / 6854 From parsing: what DMARC sees must be what a reader sees."""
import pytest

from authfilter.addresses import (MAX_FIELD_LENGTH, AddressError, author_addresses,
                                  normalize_domain, parse_address_list)


def domains(value):
    return [m.domain for m in parse_address_list(value)]


@pytest.mark.parametrize("value, expected", [
    ("user@example.com", ["example.com"]),
    ("User@EXAMPLE.Com", ["example.com"]),
    ("<user@example.com>", ["example.com"]),
    ("Joe Q. Public <john.q.public@example.com>", ["example.com"]),
    ("Joe <joe@example.com> (a comment)", ["example.com"]),
    ("user@example.com.", ["example.com"]),                               # trailing dot dropped
    # quoted display names cannot smuggle an address in
    ('"ceo@bank.example" <x@evil.example>', ["evil.example"]),
    ('"Bank <ceo@bank.example>" <x@evil.example>', ["evil.example"]),
    (r'"a\"<ceo@bank.example>\"" <x@evil.example>', ["evil.example"]),    # quoted-pairs
    (r'"\\" <x@evil.example>', ["evil.example"]),                        # escaped backslash ends the string
    # quoted local parts are local parts, whatever they contain
    ('"ceo@bank.example"@evil.example', ["evil.example"]),
    (r'"a\"@bank.example"@evil.example', ["evil.example"]),
    # comments, nested, with quoted-pairs, in every CFWS position
    ("(ceo@bank.example) x@evil.example", ["evil.example"]),
    ("(a (nested <ceo@bank.example>) c) x@evil.example", ["evil.example"]),
    (r"(a \) <ceo@bank.example>) x@evil.example", ["evil.example"]),
    ("x(c)@(c)evil.example(c)", ["evil.example"]),
    ("Name (c) <x @ evil . example>", ["evil.example"]),                # obs-domain, obs-local-part
    ("john . smith @ example . com", ["example.com"]),
    # encoded words are decoded only in display names, never in the address
    ("=?utf-8?q?ceo=40bank=2Eexample?= <x@evil.example>", ["evil.example"]),
    ("=?utf-8?b?PGNlb0BiYW5rLmV4YW1wbGU+?= <x@evil.example>", ["evil.example"]),
    ("=?utf-8?q?ceo?=@evil.example", ["evil.example"]),
    # address lists, groups (RFC 6854), obsolete empty elements, source routes
    ("a@one.example, b@two.example", ["one.example", "two.example"]),
    ("a@one.example, b@one.example", ["one.example", "one.example"]),
    (", a@one.example,, b@two.example ,", ["one.example", "two.example"]),
    ("Team: a@one.example, B <b@two.example>;", ["one.example", "two.example"]),
    ("Team: a@one.example;, c@three.example", ["one.example", "three.example"]),
    ("undisclosed-recipients:;", []),
    ("Team:(nobody);", []),
    ("<@relay.example,@r2.example:x@example.com>", ["example.com"]),
    # RFC 6532: UTF-8 local parts and IDN domains become A-labels
    ("Jörg <jörg@bücher.example>", ["xn--bcher-kva.example"]),
    ("x@BÜCHER.example", ["xn--bcher-kva.example"]),
    ("x@xn--bcher-kva.example", ["xn--bcher-kva.example"]),
    ("x@例え．テスト", ["xn--r8jz45g.xn--zckzah"]),                        # UTS 46 maps the full stop
    ("x@_sub.example.com", ["_sub.example.com"]),
])
def test_valid_from_values(value, expected):
    assert domains(value) == expected


@pytest.mark.parametrize("value, message", [
    ("<user@example.com", "expected '>'"),
    ("user@example.com>", "expected ','"),
    ("<<user@example.com>>", "without a local part"),
    ("Name <user@example.com", "expected '>'"),
    ("a@one.example b@two.example", "expected ','"),
    ("a@one.example <b@two.example>", "expected ','"),
    ("ceo@bank.example <x@evil.example>", "expected ','"),
    ('"unterminated <x@evil.example>', "unterminated quoted string"),
    ("(unterminated x@evil.example", "unterminated comment"),
    ("(a (b) x@evil.example", "unterminated comment"),
    ("x@evil.example)", "unbalanced ')'"),
    ("x@[192.0.2.1]", "address literal"),
    ("x@[192.0.2.1", "unterminated domain literal"),
    ("<>", "empty address"),
    ("x@", "expected 'atom'"),
    ("@evil.example", "without a local part"),
    ("x@@evil.example", "expected 'atom'"),
    ("just a name", "is not an address"),
    ("john smith@example.com", "not a valid local part"),
    (".x@example.com", "expected an address"),
    ("x.@example.com", "not a valid local part"),
    ("x@ex ample.com", "expected ','"),
    ("x@exa!mple.com", "not a valid DNS label"),
    ("x@" + "a" * 64 + ".example", "not a valid DNS label"),
    ("x@" + ("a" * 60 + ".") * 5 + "example", "longer than 253"),
    ("x@evil\\.example", "not allowed"),
    ("x@evil.example\x00", "not allowed"),
    ("Outer: Inner: a@b.example;;", "group inside a group"),
    ("Team: a@one.example", "not terminated by ';'"),
    ("x@-\u0301.example", "not a valid IDN"),
    (b"x@b\xfccher.example", "not a valid IDN"),                        # Latin-1, not UTF-8
])
def test_invalid_from_values(value, message):
    with pytest.raises(AddressError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        parse_address_list(value)


def test_display_names_are_decoded_for_humans_only():
    (box,) = parse_address_list("=?utf-8?q?J=C3=B6rg?= =?utf-8?q?_Smith?= <j@example.com>")
    assert box.display_name == "Jörg Smith"
    (box,) = parse_address_list('"Smith, John" <j@example.com>')
    assert box.display_name == "Smith, John" and box.local_part == "j"
    (box,) = parse_address_list("=?bogus-charset?q?x?= <j@example.com>")
    assert box.display_name == "=?bogus-charset?q?x?="


@pytest.mark.parametrize("word", ["=?ut\xa7-8?q?x?=", "=?utf-8?b?####?=", "=?utf-8?q?=ZZ?=",
                                  "=?\u00e9?q?x?=", "=?utf-8*fr?q?x?="])
def test_a_malformed_encoded_word_is_kept_as_written_never_an_error(word):
    """RFC 2047 s. 6.3: a word that cannot be decoded may be shown as it is.  The first one
    (a charset name with a non-ASCII byte) raised CharsetError out of the checks."""
    (box,) = parse_address_list(f"{word} <j@example.com>".encode("utf-8", "surrogateescape"))
    assert box.domain == "example.com" and box.local_part == "j"


def test_legacy_8bit_display_name_is_tolerated_and_made_readable():
    (box,) = parse_address_list(b"J\xf6rg <j@example.com>\r\n")
    assert box.domain == "example.com" and box.display_name == "J\ufffdrg"


def test_folded_value_is_unfolded():
    assert domains(b" Joe\r\n <joe@\r\n example.com>\r\n") == ["example.com"]


def test_input_size_is_bounded():
    long_value = "x" * MAX_FIELD_LENGTH + "@example.com"
    with pytest.raises(AddressError, match="longer than"):
        parse_address_list(long_value)


def test_author_addresses_keeps_every_field_and_problem():
    result = author_addresses([b" a@one.example\r\n", b" <broken\r\n", b" B <b@two.example>\r\n"])
    assert result.field_count == 3
    assert result.domains == ("one.example", "two.example")
    assert len(result.problems) == 1
    assert author_addresses([]).field_count == 0


def test_domains_are_distinct_in_order():
    result = author_addresses([b"b@two.example, a@one.example, c@two.example"])
    assert result.domains == ("two.example", "one.example")


@pytest.mark.parametrize("text, expected", [
    ("Example.COM.", "example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    (" mail.example.org ", "mail.example.org"),
])
def test_normalize_domain(text, expected):
    assert normalize_domain(text) == expected


@pytest.mark.parametrize("text", ["", ".", "a..b", "ex ample.com", "a" * 64 + ".com"])
def test_normalize_domain_rejects(text):
    with pytest.raises(AddressError):
        normalize_domain(text)


def test_a_repeated_value_gives_the_same_answer_each_time():
    good = b" Alice <alice@Example.COM>\r\n"
    first = parse_address_list(good)
    first.append("changed by the caller")
    assert [m.domain for m in parse_address_list(good)] == ["example.com"]
    for _ in range(2):
        with pytest.raises(AddressError):
            parse_address_list(b" Alice <alice@example.com\r\n")
