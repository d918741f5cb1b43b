"""systemd's readiness protocol (sd_notify(3)), without libsystemd.

``Type=notify`` units learn from ``READY=1`` that every listener is bound, so ``Before=`` /
``After=`` ordering (Postfix after authfilter) means "listening", not "forked".  Outside
systemd ($NOTIFY_SOCKET unset) every call is a no-op.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("authfilter.serve")


def notify(*assignments: str) -> bool:
    """Send ``KEY=value`` lines to the service manager; True when one was listening."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):                     # an abstract socket (sd_notify(3))
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(assignments).encode("utf-8"))
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", address.lstrip("\0"), exc)
        return False
    return True
