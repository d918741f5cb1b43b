"""The signing table: which keys sign mail from which From domain.

Each configured key names its signing domain (d=), selector, algorithm, key file, whether it is
active, and the From domains it signs for: exact names, or ``*.example.com`` for every
subdomain of example.com (not example.com itself).  For a From domain the most specific
pattern wins: an exact name first, then the wildcard of the nearest parent.  The active keys of
that pattern sign, RSA first, so that a message can carry both an RSA and an Ed25519 signature
(RFC 8463 s. 1: Ed25519 beside RSA, never instead of it).

Inactive keys are loaded too (a configured file that is missing or readable by others is an
error either way) so that ``authfilter keys check`` can watch every record during a rotation.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..addresses import AddressError, normalize_domain
from ..config import SigningConfig
from .keys import RSA_SHA256, SigningConfigError, SigningKey, load_key


@dataclass(frozen=True, eq=False)
class TableKey:
    """One configured key, loaded."""

    domain: str                     # d=, A-labels, lower case
    selector: str
    key: SigningKey
    active: bool
    from_domains: tuple[str, ...]   # normalized patterns

    @property
    def algorithm(self) -> str:
        return self.key.algorithm

    def describe(self) -> str:
        return f"d={self.domain} s={self.selector} a={self.algorithm}"


class SigningTable:
    def __init__(self, keys: list[TableKey]) -> None:
        self.keys = tuple(keys)
        self._exact: dict[str, list[TableKey]] = {}
        self._subdomains: dict[str, list[TableKey]] = {}     # "*.example.com" keyed by "example.com"
        for entry in keys:
            for pattern in entry.from_domains:
                if pattern.startswith("*."):
                    self._subdomains.setdefault(pattern[2:], []).append(entry)
                else:
                    self._exact.setdefault(pattern, []).append(entry)

    @classmethod
    def from_config(cls, signing: SigningConfig) -> "SigningTable":
        """Load every configured key; :class:`SigningConfigError` names the first bad one."""
        loaded: dict[tuple[str, str], SigningKey] = {}
        entries = []
        for index, conf in enumerate(signing.keys):
            where = f"signing.keys[{index}] (s={conf.selector} d={conf.domain})"
            cache_key = (conf.key_file, conf.algorithm)
            if cache_key not in loaded:
                loaded[cache_key] = load_key(conf.key_file, conf.algorithm)
            try:
                domain = normalize_domain(conf.domain)
                patterns = tuple(_normalize_pattern(p) for p in conf.from_domains or [conf.domain])
            except AddressError as exc:
                raise SigningConfigError(f"{where}: {exc}") from None
            entries.append(TableKey(domain, conf.selector, loaded[cache_key], conf.active, patterns))
        return cls(entries)

    def lookup(self, from_domain: str) -> tuple[str | None, tuple[TableKey, ...]]:
        """(the pattern that matched, its active keys with RSA first); (None, ()) if none did.

        ``from_domain`` must already be normalized (A-labels, lower case), as
        :func:`authfilter.addresses.author_addresses` gives it.
        """
        entries = self._exact.get(from_domain)
        pattern = from_domain
        if entries is None:
            labels = from_domain.split(".")
            for i in range(1, len(labels)):
                parent = ".".join(labels[i:])
                entries = self._subdomains.get(parent)
                if entries is not None:
                    pattern = "*." + parent
                    break
        if entries is None:
            return None, ()
        active = sorted((e for e in entries if e.active), key=lambda e: e.algorithm != RSA_SHA256)
        return pattern, tuple(active)


def _normalize_pattern(pattern: str) -> str:
    if pattern.startswith("*."):
        return "*." + normalize_domain(pattern[2:])
    return normalize_domain(pattern)
