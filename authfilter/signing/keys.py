"""Private signing keys: loading (with a permission check), generating, and publishing.

A key file is PEM: PKCS#8 (``BEGIN PRIVATE KEY``, what ``authfilter keygen`` writes) or, for
RSA, PKCS#1 (``BEGIN RSA PRIVATE KEY``, what ``opendkim-genkey`` writes).  An Ed25519 key may
also be dkimpy's format: the base64 of the 32-byte seed on one line.

A private key that group or others can access is refused, naming the file: a signing key that
another local user can read lets that user sign mail as the domain.

The public half is published as a DKIM key record (RFC 6376 s. 3.6.1): ``v=DKIM1; k=rsa;
p=<base64 SubjectPublicKeyInfo>`` or ``v=DKIM1; k=ed25519; p=<base64 of the 32-byte key>``
(RFC 8463 s. 4).
"""
from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

RSA_SHA256 = "rsa-sha256"
ED25519_SHA256 = "ed25519-sha256"
KEY_TYPES = {RSA_SHA256: "rsa", ED25519_SHA256: "ed25519"}   # a= -> k= of the key record

# RFC 8301 s. 3.2: signers MUST use at least 1024 bits and SHOULD use at least 2048; verifiers
# MUST be able to validate 1024 to 4096 bits, so a longer key may not verify everywhere.
RSA_MIN_BITS = 1024
RSA_MAX_BITS = 4096
MAX_KEY_FILE_BYTES = 64 * 1024
TXT_STRING_MAX = 255                 # one <character-string> of a TXT record (RFC 1035 s. 3.3)

_SHA256_PREHASHED = Prehashed(hashes.SHA256())


class SigningConfigError(Exception):
    """A key or signing setting that cannot be used; the message names the file or key."""


@dataclass(frozen=True, eq=False)
class SigningKey:
    """A loaded private key and the algorithm (a=) it signs with."""

    algorithm: str
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    path: str = ""

    @property
    def key_type(self) -> str:
        return KEY_TYPES[self.algorithm]

    @property
    def bits(self) -> int:
        return self.private_key.key_size if isinstance(self.private_key, rsa.RSAPrivateKey) else 256

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign the SHA-256 digest of the header hash input: RSASSA-PKCS1-v1_5 (RFC 6376
        s. 3.3.1) or PureEdDSA over the digest (RFC 8463 s. 3).  Both are deterministic."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(digest, padding.PKCS1v15(), _SHA256_PREHASHED)
        return self.private_key.sign(digest)

    def public_key_data(self) -> bytes:
        """The bytes that p= carries, before base64."""
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            return public.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def dns_record(self) -> str:
        """The key record's text: ``v=DKIM1; k=...; p=...``."""
        p = base64.b64encode(self.public_key_data()).decode("ascii")
        return f"v=DKIM1; k={self.key_type}; p={p}"

    def matches(self, public_key: object) -> bool:
        """Whether ``public_key`` (a ``cryptography`` public key, as dkimcore parses a record)
        is the public half of this key."""
        mine = self.private_key.public_key()
        if isinstance(mine, rsa.RSAPublicKey):
            return isinstance(public_key, rsa.RSAPublicKey) and \
                public_key.public_numbers() == mine.public_numbers()
        return isinstance(public_key, ed25519.Ed25519PublicKey) and \
            public_key.public_bytes_raw() == mine.public_bytes_raw()

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())


# -- loading ----------------------------------------------------------------------------------
def load_key(path: str, algorithm: str) -> SigningKey:
    """Read, permission-check and parse one private key; :class:`SigningConfigError` otherwise."""
    data = _read_private_file(path)
    key = _parse_private_key(path, data, algorithm)
    return SigningKey(algorithm, key, path)


def _read_private_file(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise SigningConfigError(f"{path}: cannot open private key: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)                     # the file we opened, not whatever the path is now
        if not stat.S_ISREG(info.st_mode):
            raise SigningConfigError(f"{path}: private key is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise SigningConfigError(
                f"{path}: private key can be accessed by group or others (mode {mode:04o}); "
                f"refusing to use it: run chmod 600 {path} (and check who could have read it)")
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise SigningConfigError(f"{path}: {info.st_size} bytes is too large for a private key")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(MAX_KEY_FILE_BYTES)
    except OSError as exc:
        raise SigningConfigError(f"{path}: cannot read private key: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _parse_private_key(path: str, data: bytes, algorithm: str) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    if algorithm not in KEY_TYPES:
        raise SigningConfigError(f"{path}: unknown algorithm {algorithm!r}")
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise SigningConfigError(f"{path}: private key is encrypted; authfilter needs it "
                                     f"unencrypted (and readable by its user only)") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SigningConfigError(f"{path}: not a usable PEM private key ({exc})") from None
    else:
        key = _ed25519_seed(path, data)
    wanted = KEY_TYPES[algorithm]
    if wanted == "rsa" and not isinstance(key, rsa.RSAPrivateKey) or \
            wanted == "ed25519" and not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningConfigError(f"{path}: not an {wanted.upper() if wanted == 'rsa' else 'Ed25519'} "
                                 f"private key, but the configured algorithm is {algorithm}")
    if isinstance(key, rsa.RSAPrivateKey) and not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
        raise SigningConfigError(f"{path}: RSA key of {key.key_size} bits; use {RSA_MIN_BITS} to "
                                 f"{RSA_MAX_BITS} bits, 2048 recommended (RFC 8301 s. 3.2)")
    return key


def _ed25519_seed(path: str, data: bytes) -> ed25519.Ed25519PrivateKey:
    """dkimpy's Ed25519 key file: base64 of the 32-byte seed."""
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise SigningConfigError(f"{path}: neither a PEM private key nor a base64 Ed25519 seed")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


# -- generating -------------------------------------------------------------------------------
def generate_key(algorithm: str, bits: int = 2048) -> SigningKey:
    if algorithm == ED25519_SHA256:
        return SigningKey(algorithm, ed25519.Ed25519PrivateKey.generate())
    if algorithm != RSA_SHA256:
        raise ValueError(f"unknown algorithm {algorithm!r}")
    if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
        raise ValueError(f"RSA keys must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits (RFC 8301 s. 3.2)")
    return SigningKey(algorithm, rsa.generate_private_key(public_exponent=65537, key_size=bits))


def write_new_key(path: str, key: SigningKey, owner: tuple[int, int] | None = None) -> None:
    """Create ``path`` with mode 0600 holding the PKCS#8 PEM key; never overwrite a file.

    The file is created with its final mode (``O_EXCL``), so the key is never readable by
    others, not even for a moment; FileExistsError if it exists.  ``owner``: (uid, gid) it is
    given before the key is written (the service's user, which must be able to read it).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)                    # the umask may only have removed bits; be exact
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(os.dup(fd), "wb") as fh:
            fh.write(key.private_pem())
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def zone_file_record(selector: str, domain: str, record: str) -> str:
    """The key record in zone-file syntax, its text split into strings of at most 255 bytes
    (a TXT record's strings are joined without separator, RFC 6376 s. 3.6.2.2)."""
    raw = record.encode("ascii")
    strings = [raw[i:i + TXT_STRING_MAX].decode("ascii") for i in range(0, len(raw), TXT_STRING_MAX)]
    owner = f"{selector}._domainkey.{domain}."
    if len(strings) == 1:
        return f'{owner} IN TXT "{strings[0]}"\n'
    body = "\n\t".join(f'"{s}"' for s in strings)
    return f"{owner} IN TXT (\n\t{body} )\n"
