"""Signing keys: permission refusal, formats, generation (0600, O_EXCL), the published record,
`authfilter keygen`, and the [signing] config checks."""
from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import tomllib

import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from authfilter import cli, config, dkimcore
from authfilter.commands import keygen as keygen_command
from authfilter.signing import Signer, SigningConfigError
from authfilter.signing.keys import (ED25519_SHA256, RSA_SHA256, generate_key, load_key,
                                     write_new_key, zone_file_record)


@pytest.fixture(scope="module")
def rsa_private():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write(path, data: bytes, mode: int) -> str:
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


def pem(private_key, fmt=serialization.PrivateFormat.PKCS8, encryption=None) -> bytes:
    return private_key.private_bytes(serialization.Encoding.PEM, fmt,
                                     encryption or serialization.NoEncryption())


# -- loading ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620, 0o602, 0o610])
def test_key_that_group_or_others_can_access_is_refused_naming_the_file(tmp_path, rsa_private, mode):
    path = write(tmp_path / "k.pem", pem(rsa_private), mode)
    with pytest.raises(SigningConfigError) as err:
        load_key(path, RSA_SHA256)
    assert path in str(err.value) and f"{mode:04o}" in str(err.value)
    assert "chmod 600" in str(err.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_key_loads(tmp_path, rsa_private, mode):
    key = load_key(write(tmp_path / "k.pem", pem(rsa_private), mode), RSA_SHA256)
    assert key.bits == 2048 and key.key_type == "rsa"


def test_signer_refuses_to_start_with_a_readable_key(tmp_path, rsa_private):
    path = write(tmp_path / "k.pem", pem(rsa_private), 0o644)
    cfg = config.from_dict({"signing": {"keys": [
        {"domain": "example.com", "selector": "s1", "key_file": path}]}})
    with pytest.raises(SigningConfigError, match=str(path)):
        Signer.from_config(cfg)


def test_inactive_keys_are_checked_too(tmp_path, rsa_private):
    good = write(tmp_path / "good.pem", pem(rsa_private), 0o600)
    bad = write(tmp_path / "old.pem", pem(rsa_private), 0o640)
    cfg = config.from_dict({"signing": {"keys": [
        {"domain": "example.com", "selector": "new", "key_file": good},
        {"domain": "example.com", "selector": "old", "key_file": bad, "active": False}]}})
    with pytest.raises(SigningConfigError, match="old.pem"):
        Signer.from_config(cfg)


def test_pkcs1_pem_and_dkimpy_ed25519_seed_are_accepted(tmp_path, rsa_private):
    key = load_key(write(tmp_path / "a.pem", pem(rsa_private, serialization.PrivateFormat.TraditionalOpenSSL),
                         0o600), RSA_SHA256)
    assert key.bits == 2048
    seed_key = ed25519.Ed25519PrivateKey.generate()
    seed = base64.b64encode(seed_key.private_bytes_raw()) + b"\n"
    key = load_key(write(tmp_path / "ed.key", seed, 0o600), ED25519_SHA256)
    assert key.public_key_data() == seed_key.public_key().public_bytes_raw()


@pytest.mark.parametrize("content, algorithm, message", [
    (b"garbage", RSA_SHA256, "neither a PEM private key nor a base64 Ed25519 seed"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", RSA_SHA256, "not a usable PEM"),
    ("ed", RSA_SHA256, "not an RSA private key, but the configured algorithm is rsa-sha256"),
    ("rsa", ED25519_SHA256, "not an Ed25519 private key"),
    ("encrypted", RSA_SHA256, "encrypted"),
])
def test_unusable_key_files_are_refused_with_a_reason(tmp_path, rsa_private, content, algorithm, message):
    if content == "ed":
        content = pem(ed25519.Ed25519PrivateKey.generate())
    elif content == "rsa":
        content = pem(rsa_private)
    elif content == "encrypted":
        content = pem(rsa_private, encryption=serialization.BestAvailableEncryption(b"secret"))
    path = write(tmp_path / "k", content, 0o600)
    with pytest.raises(SigningConfigError) as err:
        load_key(path, algorithm)
    assert str(err.value).startswith(path) and message in str(err.value)


def test_missing_file_and_directory_are_refused(tmp_path):
    with pytest.raises(SigningConfigError, match="cannot open private key"):
        load_key(str(tmp_path / "nope.pem"), RSA_SHA256)
    os.chmod(tmp_path, 0o700)
    with pytest.raises(SigningConfigError, match="not a regular file"):
        load_key(str(tmp_path), RSA_SHA256)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_rsa_key_under_1024_bits_is_refused(tmp_path):
    path = tmp_path / "small.pem"
    made = subprocess.run(["openssl", "genrsa", "-out", str(path), "768"], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"openssl refused to make a 768-bit key: {made.stderr.decode()[:200]}")
    os.chmod(path, 0o600)
    with pytest.raises(SigningConfigError, match="768 bits"):
        load_key(str(path), RSA_SHA256)


# -- generating and publishing ----------------------------------------------------------------
def test_new_key_file_is_0600_whatever_the_umask_and_never_overwritten(tmp_path):
    old = os.umask(0)
    try:
        path = str(tmp_path / "k.key")
        key = generate_key(ED25519_SHA256)
        write_new_key(path, key)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_key(path, ED25519_SHA256).public_key_data() == key.public_key_data()
    before = open(path, "rb").read()
    with pytest.raises(FileExistsError):
        write_new_key(path, generate_key(ED25519_SHA256))
    assert open(path, "rb").read() == before


def test_new_key_is_not_written_through_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    os.symlink(target, tmp_path / "k.key")
    with pytest.raises(FileExistsError):
        write_new_key(str(tmp_path / "k.key"), generate_key(ED25519_SHA256))
    assert not target.exists()


def parse_zone_record(text: str) -> tuple[str, bytes]:
    """Owner and joined TXT strings of a zone-file line, as a DNS server would load it."""
    zone = dns.zone.from_text("$TTL 300\n. IN SOA ns. hostmaster. 1 2 3 4 5\n" + text,
                              origin=".", relativize=False, check_origin=False)
    for name, node in zone.nodes.items():
        rdataset = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.TXT)
        if rdataset is not None:
            (rdata,) = rdataset
            assert all(len(s) <= 255 for s in rdata.strings)
            return name.to_text(), b"".join(rdata.strings)
    raise AssertionError("no TXT record")


@pytest.mark.parametrize("algorithm, bits", [(RSA_SHA256, 1024), (RSA_SHA256, 2048),
                                             (ED25519_SHA256, 0)])
def test_zone_file_record_parses_and_publishes_the_public_key(algorithm, bits):
    key = generate_key(algorithm, bits or 2048)
    text = zone_file_record("s2025", "example.com", key.dns_record())
    owner, value = parse_zone_record(text)
    assert owner == "s2025._domainkey.example.com."
    assert value.decode() == key.dns_record()
    published = dkimcore.parse_key_record(value)
    assert published.key_type == key.key_type and key.matches(published.public_key)
    assert text.count('"') // 2 == (len(value) + 254) // 255


def run_command(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="authfilter")
    module.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_commands_are_registered_in_the_cli():
    assert {"sign", "keygen", "keys"} <= set(cli.COMMAND_MODULES)


@pytest.mark.parametrize("algorithm, k", [("rsa", "rsa"), ("ed25519", "ed25519")])
def test_keygen_writes_a_0600_key_and_prints_its_record(tmp_path, capsys, algorithm, k):
    code = run_command(keygen_command, ["keygen", "--domain", "Example.COM", "--selector", "s1",
                                        "--algorithm", algorithm, "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0
    path = tmp_path / "example.com.s1.key"
    assert os.stat(path).st_mode & 0o777 == 0o600
    owner, value = parse_zone_record(out)
    assert owner == "s1._domainkey.example.com."
    key = load_key(str(path), keygen_command.ALGORITHMS[algorithm])
    assert value.decode() == key.dns_record() and f"k={k};" in value.decode()
    # the stderr snippet is a valid config that loads this very key
    snippet = err[err.index("[[signing.keys]]"):]
    cfg = config.from_dict(tomllib.loads(snippet))
    assert Signer.from_config(cfg).table.keys[0].key.dns_record() == key.dns_record()


@pytest.mark.parametrize("argv, message", [
    (["--domain", "bad domain", "--selector", "s"], "--domain"),
    (["--domain", "example.com", "--selector", "a b"], "--selector"),
    (["--domain", "example.com", "--selector", "s", "--bits", "512"], "--bits"),
    (["--domain", "example.com", "--selector", "s", "--bits", "8192"], "--bits"),
])
def test_keygen_usage_errors(tmp_path, capsys, argv, message):
    assert run_command(keygen_command, ["keygen", "--out", str(tmp_path)] + argv) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_keygen_never_overwrites(tmp_path, capsys):
    argv = ["keygen", "--domain", "example.com", "--selector", "s", "--algorithm", "ed25519",
            "--out", str(tmp_path)]
    assert run_command(keygen_command, argv) == 0
    before = (tmp_path / "example.com.s.key").read_bytes()
    assert run_command(keygen_command, argv) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "example.com.s.key").read_bytes() == before


# -- [signing] config -------------------------------------------------------------------------
@pytest.mark.parametrize("signing, problem", [
    ({"keys": [{"domain": "example.com", "selector": "s1"}]}, "keys[0]: key_file not set"),
    ({"keys": [{"domain": "example.com", "selector": "a", "key_file": "/k"},
               {"domain": "example.com", "selector": "b", "key_file": "/k"}]},
     "keys[0] and keys[1] are both active rsa-sha256 keys for example.com"),
    ({"keys": [{"domain": "example.com", "selector": "s", "key_file": "/k", "from_domains": ["*"]}]},
     "from_domains"),
    ({"keys": [{"domain": "example.com", "selector": "s", "key_file": "/k", "algorithm": "rsa-sha1"}]},
     "algorithm"),
    ({"headers": ["to", "subject"]}, "headers must include from"),
    ({"arc": {"domain": "example.org"}}, "arc: selector and key_file must be set"),
    ({"arc": {"headers": ["from", "Authentication-Results"]}}, "must not be signed"),
    ({"canonicalization": "relaxed/strict"}, "canonicalization"),
])
def test_signing_config_problems_are_named(signing, problem):
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({"signing": signing})
    assert problem in str(err.value)


def test_rotation_config_one_active_key_per_algorithm_is_valid():
    cfg = config.from_dict({"signing": {"keys": [
        {"domain": "example.com", "selector": "2024", "key_file": "/k1", "active": False},
        {"domain": "example.com", "selector": "2025", "key_file": "/k2"},
        {"domain": "example.com", "selector": "ed2025", "key_file": "/k3", "algorithm": "ed25519-sha256"},
    ]}})
    assert [k.active for k in cfg.signing.keys] == [False, True, True]
