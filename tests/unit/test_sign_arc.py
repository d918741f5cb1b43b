"""ARC sealing (RFC 8617 s. 5.1): the public ARC signing suite, when to seal and when not, and
seals that dkimpy's arc_verify and our own validator accept (keys offline here; through the
loopback DNS server in tests/integration/test_interop_arc.py)."""
from __future__ import annotations

import re

import dkim
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from authfilter import config
from authfilter.authres import authserv_id_of
from authfilter.checks.arc import validate_chain
from authfilter.config import ARC_UNSIGNABLE, SIGNED_HEADERS
from authfilter.dns import DnsAnswer
from authfilter.message import Message
from authfilter.results import ArcResult
from authfilter.signing import ArcSealer, SigningConfigError
from authfilter.signing.keys import RSA_SHA256, SigningKey, _parse_private_key
from tests.conftest import testdata as conformance_file
from tests.unit.test_sign_samples import NOW, SAMPLES, key_of, txt_lookup

AR_VALUE = ("mx.example.org; spf=pass smtp.mailfrom=example.com; dkim=pass header.d=example.com "
            "header.s=s1; dmarc=pass (p=reject dis=NONE; aligned) header.from=example.com")


@pytest.fixture(scope="module")
def rsa_key():
    return key_of(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def sealer(rsa_key):
    return ArcSealer("example.org", "arc1", rsa_key, SIGNED_HEADERS + ["dkim-signature"])


@pytest.fixture(scope="module")
def lookup(rsa_key):
    return txt_lookup({"arc1._domainkey.example.org": rsa_key.dns_record()})


def dkimpy_cv(raw: bytes, lookup) -> str | None:
    cv, _, _ = dkim.arc_verify(raw, dnsfunc=lookup)
    return cv.decode() if cv else None


def our_cv(raw: bytes, records: dict[str, str]) -> ArcResult:
    keys = {name: DnsAnswer(name, "TXT", "ok", (value.encode(),)) for name, value in records.items()}
    return validate_chain(Message.parse(raw), keys, NOW + 60)


def with_arc(value: str, word: str) -> str:
    return value.replace("; spf=", f"; arc={word}; spf=", 1)


# -- the public ARC signing suite ------------------------------------------------------------
def _sign_cases():
    path = conformance_file("arc", "arc-draft-sign-tests.yml")
    with open(path) as fh:
        for suite in yaml.safe_load_all(fh):
            for name, case in suite["tests"].items():
                yield pytest.param(suite, case, id=name)


def _merged_authres(message: Message, srv_id: str) -> str:
    """The message's A-R fields for srv_id merged into one value, as the suite's AAR expects."""
    values = [v.decode().replace("\r\n", "").strip().rstrip(";") for n, v in message.headers
              if n.lower() == b"authentication-results" and authserv_id_of(v) == srv_id]
    return values[0] + "".join("; " + v.split(";", 1)[1].strip() for v in values[1:] if ";" in v)


def _compact(text: bytes) -> bytes:
    return re.sub(rb"\s+", b"", text)


def test_arc_signing_suite():
    """Every case of the ValiMail ARC signing suite: same AAR, AMS and AS (b= included), or no
    seal where the suite expects none.  The suite's key is 1024 bits."""
    cases = list(_sign_cases())
    failures = []
    for param in cases:
        suite, case = param.values
        key = SigningKey(RSA_SHA256, _parse_private_key("suite", suite["privatekey"].encode(), RSA_SHA256))
        raw = case["message"].encode().replace(b"\n", b"\r\n")
        value = _merged_authres(Message.parse(raw), case["srv-id"])
        word = re.search(r"\barc=(\w+)", value)
        chain = ArcResult(word.group(1) if word else "none")
        sealer = ArcSealer(suite["domain"], suite["sel"], key, case["sig-headers"].split(":"))
        outcome = sealer.seal_message(raw, value, chain, now=int(case["t"]))
        expected = [(case[k] or "").strip().encode() for k in ("AS", "AMS", "AAR")]
        if not expected[0]:
            if outcome.skipped is None:
                failures.append(f"{param.id}: sealed, the suite expects no seal")
            continue
        got = [v for _, v in Message.parse(outcome.message).headers[:3]]
        if outcome.skipped or [_compact(g) for g in got] != [_compact(e) for e in expected]:
            failures.append(f"{param.id}: {outcome.skipped or 'different ARC set'}")
    assert not failures and len(cases) == 17, failures


# -- sealing rules ---------------------------------------------------------------------------
def test_first_hop_then_second_hop_validate_with_dkimpy_and_ours(sealer, lookup, rsa_key):
    records = {"arc1._domainkey.example.org": rsa_key.dns_record()}
    first = sealer.seal_message(SAMPLES["plain"], with_arc(AR_VALUE, "none"), ArcResult("none"), now=NOW)
    assert (first.instance, first.chain_status, first.skipped) == (1, "none", None)
    assert [n for n, _ in Message.parse(first.message).headers[:3]] == \
        [b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"]
    assert dkimpy_cv(first.message, lookup) == "pass"
    assert our_cv(first.message, records).result == "pass"

    second = sealer.seal_message(first.message, with_arc(AR_VALUE, "pass"),
                                 ArcResult("pass", instances=1), now=NOW + 1)
    assert (second.instance, second.chain_status) == (2, "pass")
    assert dkimpy_cv(second.message, lookup) == "pass"
    ours = our_cv(second.message, records)
    assert (ours.result, ours.instances, ours.sealers) == ("pass", 2, ("example.org", "example.org"))


def test_aar_is_our_authentication_results_folded_or_not(sealer):
    folded = "mx.example.org;\r\n\tspf=pass smtp.mailfrom=example.com;\r\n\tarc=none"
    outcome = sealer.seal_message(SAMPLES["plain"], folded, ArcResult("none"), now=NOW)
    aar = Message.parse(outcome.message).get_all(b"arc-authentication-results")[0]
    assert re.sub(rb"\s+", b" ", aar).strip() == \
        b"i=1; mx.example.org; spf=pass smtp.mailfrom=example.com; arc=none"
    assert all(len(line) <= 78 for line in (b"ARC-Authentication-Results:" + aar).split(b"\r\n"))


def test_broken_chain_is_sealed_with_cv_fail_covering_only_our_set(sealer, lookup):
    sealed = sealer.seal_message(SAMPLES["plain"], AR_VALUE, ArcResult("none"), now=NOW).message
    tampered = sealed.replace(b"see you.", b"see you!")
    assert dkimpy_cv(tampered, lookup) == "fail"
    outcome = sealer.seal_message(tampered, with_arc(AR_VALUE, "fail"),
                                  ArcResult("fail", instances=1, reason="AMS 1 fails"), now=NOW + 1)
    assert (outcome.instance, outcome.chain_status) == (2, "fail")
    # the newest seal now says the chain failed: a validator reports the chain as ended
    assert dkimpy_cv(outcome.message, lookup) is None
    # and nobody (we included) may extend it
    again = sealer.seal_message(outcome.message, AR_VALUE, ArcResult("fail", instances=2), now=NOW + 2)
    assert again.message == outcome.message and "cv=fail" in again.skipped


@pytest.mark.parametrize("chain, reason", [
    (ArcResult("pass", instances=1), "does not fit the 0 ARC set(s)"),
    (ArcResult("fail"), "does not fit the 0 ARC set(s)"),
    (ArcResult("temperror"), "does not fit"),
])
def test_chain_result_that_does_not_fit_an_unsealed_message_is_not_sealed(sealer, chain, reason):
    outcome = sealer.seal_message(SAMPLES["plain"], AR_VALUE, chain, now=NOW)
    assert outcome.message == SAMPLES["plain"] and reason in outcome.skipped


def test_no_seal_over_an_unvalidated_or_temporarily_failed_chain(sealer):
    sealed = sealer.seal_message(SAMPLES["plain"], AR_VALUE, ArcResult("none"), now=NOW).message
    disabled = sealer.seal_message(sealed, AR_VALUE, ArcResult("none", reason="ARC validation disabled"))
    assert disabled.message == sealed and "does not fit the 1 ARC set(s)" in disabled.skipped
    temp = sealer.seal_message(sealed, AR_VALUE, ArcResult("fail", 1, reason="temperror: key lookup timed out"))
    assert temp.message == sealed and "temperror" in temp.skipped


def test_fifty_sets_is_the_limit(sealer):
    raw = SAMPLES["plain"]
    for i in range(50):
        raw = sealer.seal_message(raw, AR_VALUE, ArcResult("pass" if i else "none", i), now=NOW).message
    outcome = sealer.seal_message(raw, AR_VALUE, ArcResult("pass", 50), now=NOW)
    assert outcome.message == raw and "50 ARC sets already" in outcome.skipped


def test_ams_never_covers_arc_fields_or_authentication_results(sealer):
    raw = b"Authentication-Results: mx.example.org; spf=pass\r\n" + SAMPLES["plain"]
    first = sealer.seal_message(raw, AR_VALUE, ArcResult("none"), now=NOW).message
    ams = Message.parse(first).get_all(b"arc-message-signature")[0].decode()
    signed = re.search(r"(?:^|;)h=([^;]*)", re.sub(r"\s+", "", ams)).group(1).split(":")
    assert "from" in signed and not set(signed) & set(ARC_UNSIGNABLE)


def test_ed25519_sealing_key_validates_with_our_validator():
    key = key_of(ed25519.Ed25519PrivateKey.generate())
    sealer = ArcSealer("example.org", "ed1", key, SIGNED_HEADERS)
    outcome = sealer.seal_message(SAMPLES["plain"], AR_VALUE, ArcResult("none"), now=NOW)
    assert b"a=ed25519-sha256" in outcome.message
    assert our_cv(outcome.message, {"ed1._domainkey.example.org": key.dns_record()}).result == "pass"


def test_sealer_from_config(tmp_path, rsa_key):
    with pytest.raises(SigningConfigError, match="signing.arc.domain"):
        ArcSealer.from_config(config.Config())
    path = tmp_path / "arc.key"
    path.write_bytes(rsa_key.private_pem())
    path.chmod(0o600)
    cfg = config.from_dict({"signing": {"arc": {"domain": "Example.ORG", "selector": "arc1",
                                                "key_file": str(path)}}})
    sealer = ArcSealer.from_config(cfg)
    assert (sealer.domain, sealer.selector, sealer.key.algorithm) == ("example.org", "arc1", "rsa-sha256")
    path.chmod(0o644)
    with pytest.raises(SigningConfigError, match="arc.key"):
        ArcSealer.from_config(cfg)
