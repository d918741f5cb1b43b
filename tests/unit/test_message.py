from authfilter.message import MAX_ERRORS, MAX_HEADER_FIELDS, Message, unfold


def test_fields_keep_exact_bytes_and_folding():
    m = Message.parse(b"From: a@example.org\r\nSubject: one\r\n two\r\n\r\nbody\r\n")
    assert m.headers == [(b"From", b" a@example.org\r\n"), (b"Subject", b" one\r\n two\r\n")]
    assert m.body == b"body\r\n" and not m.errors
    assert unfold(m.get_all(b"subject")[0]) == b"one two"


def test_bare_lf_becomes_crlf():
    m = Message.parse(b"From: a\nTo: b\n\nline\n")
    assert m.raw == b"From: a\r\nTo: b\r\n\r\nline\r\n" and m.body == b"line\r\n"
    for proper in (b"From: a\r\n\r\nx\r\r\n\r\n", b"", b"\r\n"):
        assert Message.parse(proper).raw is proper               # nothing to do: no copy


def test_crlf_only_trusts_the_caller():
    """The SMTP receiver already knows a block has no bare LF: no search for one."""
    raw = b"From: a\r\n\r\nline\r\n"
    assert Message.parse(raw, crlf_only=True) == Message.parse(raw)
    assert Message.parse(raw, crlf_only=True).raw is raw


def test_no_body_and_no_headers():
    assert Message.parse(b"From: a\r\n").body == b""
    m = Message.parse(b"\r\nonly body\r\n")
    assert m.headers == [] and m.body == b"only body\r\n"
    assert Message.parse(b"").headers == []


def test_garbage_is_described_not_raised():
    m = Message.parse(b"\x00\xff garbage line\r\n continuation\r\nFrom: a\r\n\r\n")
    assert m.count(b"from") == 1 and m.errors


def test_header_count_is_bounded():
    raw = b"".join(b"X-H: %d\r\n" % i for i in range(MAX_HEADER_FIELDS + 50)) + b"\r\nb"
    m = Message.parse(raw)
    assert len(m.headers) == MAX_HEADER_FIELDS and "ignored" in m.errors[-1]


def test_wsp_before_the_colon_is_kept_for_simple_canonicalization():
    m = Message.parse(b"Subject : x\r\nFrom: a\r\n\r\n")
    assert m.headers[0] == (b"Subject ", b" x\r\n")
    assert m.get_all(b"subject") == [b" x\r\n"] and m.count(b"SUBJECT") == 1


def test_fields_are_found_by_name_whatever_the_case_and_wsp_before_the_colon():
    m = Message.parse(b"From: a@example.com\r\nDKIM-Signature: one\r\nX: 1\r\n"
                      b"dkim-signature \t: two\r\n folded\r\nARC-Seal: s\r\n\r\nbody\r\n")
    assert m.get_all(b"DKIM-Signature") == [b" one\r\n", b" two\r\n folded\r\n"]
    assert m.count(b"dkim-SIGNATURE") == 2 and m.count(b"Received") == 0
    assert m.indexes_of([b"arc-seal", b"dkim-signature"]) == [1, 3, 4]
    assert m.indexes_of([b"x"]) == [2] and m.indexes_of([b"received"]) == []


def test_a_field_folded_many_times_keeps_every_line_in_order():
    """RFC 5322 s. 2.2.3: a folded field is its lines joined; joined once, not per line (a
    fold bomb of 400,000 lines parsed in 11.7 s when each line copied the value so far)."""
    lines = [f" part {i}\r\n".encode() for i in range(50_000)]
    m = Message.parse(b"Subject: start\r\n" + b"".join(lines) + b"From: a@example.org\r\n\r\nbody\r\n")
    assert [name for name, _ in m.headers] == [b"Subject", b"From"]
    assert m.headers[0][1] == b" start\r\n" + b"".join(lines)
    assert m.get_all(b"from") == [b" a@example.org\r\n"] and m.body == b"body\r\n"


def test_continuation_lines_after_a_malformed_line_stay_with_the_field_before_it():
    m = Message.parse(b"A: 1\r\n 2\r\nB: 3\r\nnot a field\r\n\tmore\r\nC: 4\r\n\r\n")
    assert m.headers == [(b"A", b" 1\r\n 2\r\n"), (b"B", b" 3\r\n\tmore\r\n"), (b"C", b" 4\r\n")]
    assert m.errors == ["malformed header line: b'not a field'"]


def test_problems_are_described_up_to_a_limit():
    m = Message.parse(b"bad line\r\n" * 1000 + b"From: a@example.org\r\n\r\n")
    assert len(m.errors) == MAX_ERRORS + 1 and m.errors[-1].startswith("more problems")
    assert m.get_all(b"from") == [b" a@example.org\r\n"]
