"""Which report store a URL names, and opening it.

Kept out of :mod:`.store` so that the interface knows no backend: :mod:`.sqlite` and
:mod:`.postgres` import :mod:`.store`, this module imports them (psycopg itself is only
imported when a PostgreSQL store is opened).
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .postgres import PostgresStore
from .sqlite import SqliteStore
from .store import Store, StoreError


def default_store_url() -> str:
    """Where the reports live when the config does not say: systemd's ``StateDirectory``,
    else /var/lib/authfilter when we may write there, else the user's state directory — so
    that a newcomer without root gets a working store."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return f"sqlite://{Path(state).resolve() / 'reports.sqlite'}"
    system = Path("/var/lib/authfilter")
    if os.access(system if system.exists() else system.parent, os.W_OK):
        return f"sqlite://{system / 'reports.sqlite'}"
    user = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return f"sqlite://{user.resolve() / 'authfilter' / 'reports.sqlite'}"


def shown(url: str) -> str:
    """The store's URL for people: the default filled in, a password hidden."""
    url = url or default_store_url()
    parts = urlsplit(url)
    if not parts.password:
        return url
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{parts.hostname}{port}"))


def open_store(url: str = "") -> Store:
    """Open (and create or upgrade) the store at ``url``; ``""`` is :func:`default_store_url`."""
    url = url or default_store_url()
    if url.startswith("sqlite://"):
        store: Store = SqliteStore(url)
    elif url.startswith(("postgresql://", "postgres://")):
        store = PostgresStore(url)
    else:
        raise StoreError(f"{url!r}: the report store is sqlite:///PATH or postgresql://...")
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store
