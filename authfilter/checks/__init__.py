"""The checks: one module per method, each with its check (the interface is :mod:`.base`), and
the registry the engine runs.

Adding a method is a module here with its check, listed in :data:`BUILT_IN` (an embedder may
``REGISTRY.register`` its own instead), plus its rules in :mod:`authfilter.policy`.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from .arc import ArcCheck
from .base import Check, ClientCheck, ContentCheck, DependentCheck, EnvelopeCheck
from .dkim import DkimCheck
from .dmarc import DmarcCheck
from .dnsbl import DnsblCheck, DomainBlocklistCheck
from .iprev import IprevCheck
from .spf import HeloSpfCheck, SpfCheck

_KINDS = (ClientCheck, EnvelopeCheck, ContentCheck, DependentCheck)


class Registry:
    """Checks in the order they report: Authentication-Results, the log line, metrics and JSON
    give results in this order.  A check comes after every check it requires, so this is also
    an order the engine can run them in.

    ``client``, ``envelope``, ``content`` and ``dependent`` hold the checks of each kind, in
    this order.
    """

    def __init__(self, checks: Iterable[Check] = ()) -> None:
        self.checks: tuple[Check, ...] = ()
        self._group_by_kind()
        for check in checks:
            self.register(check)

    def register(self, check: Check) -> None:
        """Add ``check`` last; what it requires must be registered already."""
        if not isinstance(check, _KINDS):
            raise TypeError(f"{check!r} is not a ClientCheck, EnvelopeCheck, ContentCheck or "
                            f"DependentCheck")
        names = [c.name for c in self.checks]
        if check.name in names:
            raise ValueError(f"a check named {check.name!r} is registered already")
        if check.requires and not isinstance(check, DependentCheck):
            raise ValueError(f"{check.name}: only a DependentCheck can require other checks (the "
                             f"others run before or beside every other check)")
        missing = [name for name in check.requires if name not in names]
        if missing:
            raise ValueError(f"{check.name} requires {', '.join(missing)}: register that first")
        self.checks += (check,)
        self._group_by_kind()

    def unregister(self, name: str) -> Check:
        """Remove the check called ``name`` and return it; none may require it."""
        check = self[name]
        needing = [c.name for c in self.checks if name in c.requires]
        if needing:
            raise ValueError(f"{', '.join(needing)} requires {name}: unregister that first")
        self.checks = tuple(c for c in self.checks if c is not check)
        self._group_by_kind()
        return check

    def _group_by_kind(self) -> None:
        self.client = tuple(c for c in self.checks if isinstance(c, ClientCheck))
        self.envelope = tuple(c for c in self.checks if isinstance(c, EnvelopeCheck))
        self.content = tuple(c for c in self.checks if isinstance(c, ContentCheck))
        self.dependent = tuple(c for c in self.checks if isinstance(c, DependentCheck))

    def __getitem__(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def __iter__(self) -> Iterator[Check]:
        return iter(self.checks)


BUILT_IN: tuple[Check, ...] = (IprevCheck(), SpfCheck(), HeloSpfCheck(), DkimCheck(), ArcCheck(),
                               DmarcCheck(), DnsblCheck(), DomainBlocklistCheck())
"""The checks authfilter ships, in the order of its Authentication-Results header (the DNS
blocklists have no entry there: RFC 8601 registers no method for them)."""

REGISTRY = Registry(BUILT_IN)
"""The checks every :class:`~authfilter.engine.Engine` runs unless given others."""
