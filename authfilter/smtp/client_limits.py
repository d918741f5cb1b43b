"""Concurrent sessions per client address and per network, without I/O.

One address opening every session a worker has would keep everybody else out (200 idle
connections from one address kept other clients out for 49 s).  Each client address, and each
/24 (IPv4) or /64 (IPv6) network, may hold only so many sessions at once; a session over the
limit gets 421 4.7.0 instead of the greeting.  Peers in ``proxy.xforward_hosts`` are not
counted: behind Postfix every session comes from Postfix's own address, and Postfix applies its
own per-client limits (``smtpd_client_connection_count_limit``) to the real clients.
"""
from __future__ import annotations

import ipaddress
from collections import Counter

from .generation import NetworkSet

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NETWORK_PREFIX = {4: 24, 6: 64}


def network_of(ip: IpAddress) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network((ip, NETWORK_PREFIX[ip.version]), strict=False)


class ClientLimits:
    """The sessions each address and network holds in one worker; the limits :meth:`admit`
    gets are this worker's shares (:func:`.generation.share`; 0 = none)."""

    def __init__(self) -> None:
        self.clients: Counter = Counter()
        self.networks: Counter = Counter()

    def admit(self, ip: IpAddress, per_client: int, per_network: int,
              exempt: NetworkSet) -> tuple | None:
        """The keys to :meth:`release` later when the session may start, None when it is over
        a limit."""
        if exempt.contains(ip):
            return ()
        network = network_of(ip)
        if (per_client and self.clients[ip] >= per_client) or \
                (per_network and self.networks[network] >= per_network):
            return None
        self.clients[ip] += 1
        self.networks[network] += 1
        return (ip, network)

    def release(self, keys: tuple) -> None:
        if not keys:
            return
        ip, network = keys
        for counter, key in ((self.clients, ip), (self.networks, network)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
