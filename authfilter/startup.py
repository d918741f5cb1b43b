"""Everything a config names, checked before anything runs.

``authfilter config check`` and ``authfilter serve`` (and its SIGHUP reload) call the same
:func:`load_checked`, so they refuse the same problems with the same messages: the config's own
keys, the policy file it names, the signing and sealing keys (unreadable, unusable, or readable
by group or others) and the TLS certificates.  The report store is not opened here: a store
that is down must delay report rows, never mail.
"""
from __future__ import annotations

import ssl

from . import config as config_mod
from .config import Config, ConfigError


def load_checked(path: str | None) -> Config:
    """The config, or :class:`ConfigError` listing every problem with what names it."""
    from .policy import Policy, PolicyError
    from .runtime import seals, signs
    from .signing import ArcSealer, Signer, SigningConfigError

    config = config_mod.load(path)
    problems: list[str] = []
    try:
        Policy.from_config(config)
    except PolicyError as exc:
        problems += exc.problems
    if signs(config):
        try:
            Signer.from_config(config)
        except SigningConfigError as exc:
            problems.append(f"signing: {exc}")
    if seals(config):
        try:
            ArcSealer.from_config(config)
        except SigningConfigError as exc:
            problems.append(f"signing.arc: {exc}")
    for i, lc in enumerate(config.proxy.listeners):
        if lc.tls_cert:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    lc.tls_cert, lc.tls_key or None)
            except (OSError, ssl.SSLError) as exc:
                problems.append(f"proxy.listeners[{i}].tls_cert: cannot load {lc.tls_cert}: "
                                f"{getattr(exc, 'strerror', None) or exc}")
    if problems:
        raise ConfigError(problems)
    return config
