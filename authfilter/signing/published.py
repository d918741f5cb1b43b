"""Compare configured keys with the key records published in DNS (``authfilter keys check``).

For each key the record at ``SELECTOR._domainkey.DOMAIN`` (RFC 6376 s. 3.6.2.1) must exist, be
a DKIM key of the right type whose p= is our public key, allow sha256 and email, and not be
revoked.  A revoked record (empty p=, s. 3.6.1) is the normal end of an inactive key's life,
so it is reported but is a problem only for an active key.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .. import dkimcore
from ..dns import Resolver
from .keys import SigningKey

OK = "ok"
MISSING = "missing"
MISMATCH = "mismatch"
REVOKED = "revoked"
UNREACHABLE = "temperror"


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """What to look for: one configured key."""

    role: str                           # "dkim" or "arc"
    domain: str
    selector: str
    key: SigningKey
    active: bool = True

    @property
    def name(self) -> str:
        return dkimcore.key_name(self.selector, self.domain)


@dataclass(frozen=True, slots=True)
class KeyCheck:
    target: PublishedKey
    status: str
    detail: str

    @property
    def problem(self) -> bool:
        return self.status != OK and not (self.status == REVOKED and not self.target.active)


async def check_published(targets: list[PublishedKey], resolver: Resolver) -> list[KeyCheck]:
    answers = await asyncio.gather(*(resolver.query(t.name, "TXT") for t in targets))
    return [compare(t, a.status, a.records, a.reason) for t, a in zip(targets, answers)]


def compare(target: PublishedKey, status: str, records: tuple, reason: str | None = None) -> KeyCheck:
    """The verdict for one key given the DNS outcome at its name."""
    if status in ("nxdomain", "nodata"):
        return KeyCheck(target, MISSING, f"no TXT record at {target.name}: publish "
                                         f"{target.key.dns_record()!r}")
    if status != "ok":
        return KeyCheck(target, UNREACHABLE, f"could not look up {target.name}: {reason or status}")
    try:
        published = dkimcore.select_key_record(records)
    except dkimcore.KeyRecordError as exc:
        if exc.revoked:
            return KeyCheck(target, REVOKED, f"{target.name} is revoked (empty p=)"
                                             + ("" if target.active else "; inactive key, fine"))
        return KeyCheck(target, MISMATCH if records else MISSING, f"{target.name}: {exc}")
    if published.key_type != target.key.key_type:
        return KeyCheck(target, MISMATCH, f"{target.name} publishes a k={published.key_type} "
                                          f"key; ours is {target.key.algorithm}")
    if not target.key.matches(published.public_key):
        return KeyCheck(target, MISMATCH, f"{target.name} publishes a different public key "
                                          f"than {target.key.path or 'ours'}")
    if published.hashes is not None and "sha256" not in published.hashes:
        return KeyCheck(target, MISMATCH, f"{target.name} has h= without sha256")
    note = "; t=y: receivers treat the domain as testing DKIM" if published.testing else ""
    return KeyCheck(target, OK, f"{target.name} publishes this key ({published.bits} bits){note}")
