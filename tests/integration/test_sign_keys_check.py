"""`authfilter keys check` against the loopback DNS server: good, missing, mismatched, revoked
(active and inactive), wrong key type, unreachable; and `authfilter sign` end to end."""
from __future__ import annotations

import argparse
import os

import pytest

from authfilter.commands import keys as keys_command
from authfilter.commands import sign as sign_command
from authfilter.signing.keys import ED25519_SHA256, RSA_SHA256, generate_key, write_new_key


def run_command(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="authfilter")
    module.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def generated_keys():
    return {name: generate_key(algorithm, 1024 if name == "rsa2024" else 2048)
            for name, algorithm in (("rsa2025", RSA_SHA256), ("ed2025", ED25519_SHA256),
                                    ("rsa2024", RSA_SHA256), ("arc1", RSA_SHA256))}


@pytest.fixture
def keyset(tmp_path, generated_keys):
    """Keys on disk: RSA and Ed25519 active for example.com, an old RSA one inactive, plus an
    ARC sealing key; and the config naming them."""
    keys = generated_keys
    for name, key in keys.items():
        write_new_key(str(tmp_path / f"{name}.key"), key)
    conf = tmp_path / "authfilter.toml"
    conf.write_text(f"""
[[signing.keys]]
domain = "example.com"
selector = "rsa2025"
key_file = "{tmp_path / 'rsa2025.key'}"
from_domains = ["example.com", "*.example.com"]

[[signing.keys]]
domain = "example.com"
selector = "ed2025"
algorithm = "ed25519-sha256"
key_file = "{tmp_path / 'ed2025.key'}"

[[signing.keys]]
domain = "example.com"
selector = "rsa2024"
key_file = "{tmp_path / 'rsa2024.key'}"
active = false

[signing.arc]
domain = "example.org"
selector = "arc1"
key_file = "{tmp_path / 'arc1.key'}"
""")
    return keys, str(conf)


def publish(zone, keys, **overrides):
    for selector, domain in (("rsa2025", "example.com"), ("ed2025", "example.com"),
                             ("rsa2024", "example.com"), ("arc1", "example.org")):
        value = overrides.get(selector, keys[selector].dns_record())
        if value is not None:
            zone.add(f"{selector}._domainkey.{domain}", "TXT", value)


def check(zone, conf, capsys) -> tuple[int, dict[str, str], str]:
    """Exit code, the first word of each key's line by selector, and the whole output."""
    code = run_command(keys_command, ["keys", "check", "--config", conf, "--dns", zone.address])
    out = capsys.readouterr().out
    lines = {line.split(" s=")[1].split()[0]: line.split()[0] for line in out.splitlines() if " s=" in line}
    return code, lines, out


def test_every_key_published(zone, keyset, capsys):
    keys, conf = keyset
    publish(zone, keys)
    code, lines, out = check(zone, conf, capsys)
    assert code == 0
    assert lines == {"rsa2025": "OK", "ed2025": "OK", "rsa2024": "OK", "arc1": "OK"}
    assert "4 key(s) checked, 0 problem(s)" in out


@pytest.mark.parametrize("selector, record, word", [
    ("rsa2025", None, "MISSING"),
    ("ed2025", None, "MISSING"),
    ("arc1", None, "MISSING"),
    ("rsa2025", "v=DKIM1; k=rsa; p=", "REVOKED"),
    ("rsa2025", "other", "mismatch"),                 # another RSA key
    ("ed2025", "v=DKIM1; k=rsa; p=rsa-of-ed", "MISMATCH"),
    ("rsa2025", "v=DKIM1; k=rsa; h=sha1; p=self", "MISMATCH"),
    ("rsa2025", "v=DKIM1; k=rsa; p=not base64!", "MISMATCH"),
    ("rsa2024", None, "MISSING"),                    # inactive, but its record must exist
])
def test_problems_are_reported_and_exit_1(zone, keyset, capsys, selector, record, word):
    keys, conf = keyset
    if record == "other":
        record = generate_key(RSA_SHA256).dns_record()
    elif record and record.endswith("p=rsa-of-ed"):
        record = keys["rsa2025"].dns_record()
    elif record and record.endswith("p=self"):
        record = keys[selector].dns_record().replace("k=rsa;", "k=rsa; h=sha1;")
    publish(zone, keys, **{selector: record})
    code, lines, out = check(zone, conf, capsys)
    assert code == 1
    assert lines.pop(selector) == word.upper()
    assert set(lines.values()) == {"OK"}


def test_revoked_inactive_key_is_fine(zone, keyset, capsys):
    keys, conf = keyset
    publish(zone, keys, rsa2024="v=DKIM1; k=rsa; p=")
    code, lines, out = check(zone, conf, capsys)
    assert code == 0 and lines["rsa2024"] == "OK"
    assert "revoked (empty p=); inactive key, fine" in out


def test_unreachable_dns_is_a_problem(zone, keyset, capsys):
    keys, conf = keyset
    publish(zone, keys)
    zone.misbehave("ed2025._domainkey.example.com", "servfail")
    code, lines, out = check(zone, conf, capsys)
    assert code == 1 and lines["ed2025"] == "TEMPERROR"


def test_keys_check_refuses_a_readable_key(zone, keyset, capsys, tmp_path):
    keys, conf = keyset
    os.chmod(tmp_path / "ed2025.key", 0o644)
    assert run_command(keys_command, ["keys", "check", "--config", conf, "--dns", zone.address]) == 2
    assert "ed2025.key" in capsys.readouterr().err


# -- authfilter sign --------------------------------------------------------------------------
def test_sign_command_prints_the_signed_message(tmp_path, keyset, capsysbinary):
    _, conf = keyset
    message = tmp_path / "m.eml"
    message.write_bytes(b"From: a@news.example.com\nTo: b@example.org\nSubject: hi\n\nbody\n")
    assert run_command(sign_command, ["sign", "--config", conf, str(message)]) == 0
    out, err = capsysbinary.readouterr()
    assert out.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;") and b"\r" not in out
    assert out.count(b"DKIM-Signature:") == 1            # *.example.com has only the RSA key
    assert out.endswith(message.read_bytes())
    assert b"signed d=example.com s=rsa2025 a=rsa-sha256" in err


def test_sign_command_exit_1_when_not_signed(tmp_path, keyset, capsysbinary):
    _, conf = keyset
    message = tmp_path / "m.eml"
    message.write_bytes(b"From: a@example.net\r\nSubject: hi\r\n\r\nbody\r\n")
    assert run_command(sign_command, ["sign", "--config", conf, str(message)]) == 1
    out, err = capsysbinary.readouterr()
    assert out == message.read_bytes()
    assert b"not signed: From domain example.net is not in the signing table" in err


def test_sign_command_with_unusable_key_or_file(tmp_path, keyset, capsys):
    _, conf = keyset
    assert run_command(sign_command, ["sign", "--config", conf, str(tmp_path / "absent.eml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    os.chmod(tmp_path / "rsa2025.key", 0o640)
    assert run_command(sign_command, ["sign", "--config", conf, str(tmp_path / "absent.eml")]) == 2
    assert "rsa2025.key" in capsys.readouterr().err


def test_rotation_takes_effect_with_a_signer_built_from_the_reloaded_config(keyset, tmp_path):
    """What SIGHUP does: a new Signer from the changed config; the old one is unchanged."""
    from authfilter import config
    from authfilter.signing import Signer
    _, conf = keyset
    raw = b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n"
    before = Signer.from_config(config.load(conf))
    text = open(conf).read()
    text = text.replace('selector = "rsa2025"\n', 'selector = "rsa2025"\nactive = false\n')
    text = text.replace('selector = "rsa2024"\nkey_file = "' + str(tmp_path / "rsa2024.key") + '"\nactive = false',
                        'selector = "rsa2024"\nkey_file = "' + str(tmp_path / "rsa2024.key") + '"')
    open(conf, "w").write(text)
    after = Signer.from_config(config.load(conf))
    assert [k.selector for k in before.sign_message(raw).keys] == ["rsa2025", "ed2025"]
    assert [k.selector for k in after.sign_message(raw).keys] == ["rsa2024", "ed2025"]
