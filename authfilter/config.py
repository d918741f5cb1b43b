"""One TOML file -> typed, validated settings with defaults that work.

Every setting is a dataclass field with a default and a ``doc`` (the config reference in the
README is generated from them, see ``authfilter config reference``).  Loading checks every key:
an unknown key or a bad value raises :class:`ConfigError` naming the key path, e.g.
``dns.timeout: expected a number, got "fast"``.

Each section's keys live next to nothing else; a feature adds its own section class here.
"""
from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config problem; ``problems`` holds every ``"key.path: message"`` found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def setting(default: Any, doc: str, *, minimum: float | None = None, maximum: float | None = None,
            check: typing.Callable[[Any], None] | None = None) -> Any:
    """A config field: default, one-line doc, optional bounds and a value check that raises
    ``ValueError`` with a message."""
    meta = {"doc": doc, "min": minimum, "max": maximum, "check": check}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"doc": doc})


# -- value checks ---------------------------------------------------------------------------
def _check_networks(values: list[str]) -> None:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP network (e.g. 192.0.2.0/24)") from None


def _check_nameservers(values: list[str]) -> None:
    from .dns import parse_nameserver
    for v in values:
        parse_nameserver(v)


def check_hostport(value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:10025)")


def parse_listen_address(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9469"`` or ``"[::1]:9469"`` -> (IP, port); the host must be an IP address."""
    host, sep, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""                                    # an IPv6 address needs its brackets
    try:
        ipaddress.ip_address(host)
    except ValueError:
        sep = ""
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} is not IP:PORT (e.g. 127.0.0.1:9469 or [::1]:9469)")
    return host, int(port)


def _check_metrics_listen(value: str) -> None:
    """Empty (off), or an address of one interface: the endpoint has no authentication, so
    the wildcard (all interfaces) is refused."""
    if not value:
        return
    host, port = parse_listen_address(value)
    if port == 0:
        raise ValueError(f"{value!r}: give a fixed port for Prometheus to scrape")
    if ipaddress.ip_address(host).is_unspecified:
        raise ValueError(f"{value!r}: metrics have no authentication; listen on a loopback or "
                         f"one specific interface address, not on all interfaces")


# -- sections -------------------------------------------------------------------------------
@dataclass
class GeneralConfig:
    authserv_id: str = setting("", "authserv-id written in Authentication-Results (RFC 8601); "
                                   "empty = this host's FQDN")
    message_deadline: float = setting(30.0, "seconds all checks of one message may take, DNS "
                                            "included (Postfix waits 100 s)", minimum=1, maximum=90)

    def effective_authserv_id(self) -> str:
        return self.authserv_id or socket.getfqdn() or "localhost"


@dataclass
class DnsConfig:
    nameservers: list[str] = setting([], "nameservers as IP or IP:PORT ([v6]:PORT); empty = "
                                         "the system resolver (/etc/resolv.conf)",
                                     check=_check_nameservers)
    timeout: float = setting(2.0, "seconds to wait for one server's answer", minimum=0.05, maximum=30)
    lifetime: float = setting(5.0, "seconds one lookup may take, retries included",
                              minimum=0.1, maximum=60)
    cache_size: int = setting(50_000, "answers kept in the in-memory cache (0 = no cache)",
                              minimum=0, maximum=10_000_000)
    failure_ttl: int = setting(5, "seconds a failed lookup (SERVFAIL, REFUSED, timeout, bad reply) "
                                  "is remembered as temperror before it is asked again (RFC 9520; "
                                  "0 = ask every time)", minimum=0, maximum=300)


@dataclass
class SpfConfig:
    helo_check: bool = setting(False, "also check the HELO identity and report it as a separate "
                                      "spf result with smtp.helo")
    timeout: float = setting(15.0, "seconds the SPF check may take in total (RFC 7208 s. 4.6.4 "
                                   "suggests at least 20 s; the message deadline caps it)",
                             minimum=1, maximum=60)


@dataclass
class IprevConfig:
    enabled: bool = setting(True, "check the client's reverse DNS (RFC 8601 s. 3): a PTR lookup, "
                                  "then the addresses of each name; the result goes into "
                                  "Authentication-Results and the policy's [iprev] rules")
    max_names: int = setting(10, "PTR names whose addresses are looked up (RFC 8601 s. 3 caps "
                                 "it; a name beyond is ignored)", minimum=1, maximum=10)


def _check_address_ranges(values: list[str]) -> None:
    from .checks.dnsbl import parse_address_ranges
    parse_address_ranges(values)


def _check_zone(value: str) -> None:
    labels = value.rstrip(".").split(".")
    if not value or len(labels) < 2 or not all(labels) or any(len(l) > 63 for l in labels):
        raise ValueError(f"{value!r} is not a DNS zone (e.g. zen.spamhaus.org)")


DNSBL_IDENTITIES = ("helo", "mail_from", "from")


def _check_identities(values: list[str]) -> None:
    bad = [v for v in values if v not in DNSBL_IDENTITIES]
    if bad or not values:
        raise ValueError(f"give one or more of {', '.join(DNSBL_IDENTITIES)}")


@dataclass
class DnsblListConfig:
    zone: str = setting("", "the list's DNS zone, asked through the same resolver and cache as "
                            "every check (many public lists refuse queries from public "
                            "resolvers: use a local one)", check=_check_zone)
    kind: Literal["ip", "domain"] = setting(
        "ip", "ip: the client address (reversed octets, IPv6 nibbles), decided at RCPT; domain: "
              "the domains of `identities` (a DBL), decided at the end of the message")
    listed: list[str] = setting(["127.0.0.2-127.0.255.255"],
                                "answers that mean listed (addresses, ranges A-B, networks); "
                                "any other answer (e.g. Spamhaus's 127.255.255.252-255 'query "
                                "refused') is an error, never a listing", check=_check_address_ranges)
    action: Literal["reject", "tempfail", "quarantine", "tag", "allow", "score"] = setting(
        "reject", "what a listing does: reject (554 5.7.1), tempfail (451 4.7.1), quarantine, tag "
                  "(accept with dnsbl.tag_header), allow (a DNSWL: exempts the client from the "
                  "other lists and from iprev rules), score (only adds weight)")
    weight: float = setting(1.0, "what a listing adds to the score (negative for a DNSWL); "
                                 "see dnsbl.threshold", minimum=-100, maximum=100)
    identities: list[str] = setting(list(DNSBL_IDENTITIES), "kind = domain: which domains are "
                                                            "asked: helo, mail_from, from",
                                    check=_check_identities)
    name: str = setting("", "the list's name in replies, logs and metrics; empty = the zone")

    @property
    def label(self) -> str:
        return self.name or self.zone.rstrip(".").lower()


@dataclass
class DnsblConfig:
    lists: list[DnsblListConfig] = setting([], "DNS blocklists and allowlists, one "
                                               "[[dnsbl.lists]] table each; [] = none")
    threshold: float = setting(0.0, "when above 0: the weights of the lists a client is on are "
                                    "added up (postscreen_dnsbl_sites' model) and a sum at or "
                                    "over this gets threshold_action", minimum=0, maximum=1000)
    threshold_action: Literal["reject", "tempfail", "quarantine", "tag"] = setting(
        "reject", "what a score at or over the threshold does")
    tag_header: str = setting("X-Authfilter-DNSBL", "header field added by action = tag "
                                                    "(forged copies are removed first)")


@dataclass
class DkimConfig:
    max_signatures: int = setting(5, "DKIM signatures verified per message; the rest are "
                                     "reported as policy (not verified)", minimum=1, maximum=50)
    min_rsa_bits: int = setting(1024, "smaller RSA keys fail (RFC 8301 s. 3.2)",
                                minimum=1024, maximum=16384)
    partial_body: Literal["policy", "pass", "fail"] = setting(
        "policy", "result for a signature whose l= leaves body content unsigned (content was "
                  "appended): policy (default, does not count for DMARC), pass or fail")


@dataclass
class ArcConfig:
    enabled: bool = setting(True, "validate ARC chains (RFC 8617)")


@dataclass
class DmarcConfig:
    mode: Literal["rfc9989", "rfc7489"] = setting(
        "rfc9989", "rfc9989: DNS tree walk, psd=, t=; rfc7489: Public Suffix List and pct=")


@dataclass
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = setting("info", "log level")
    format: Literal["kv", "json"] = setting("kv", "one line per message as key=value or JSON")


@dataclass
class MetricsConfig:
    listen: str = setting("", "IP:PORT of the Prometheus /metrics endpoint, e.g. 127.0.0.1:9469, "
                              "one for all workers (the supervisor serves their sum); empty = off",
                          check=_check_metrics_listen)


def _check_optional_hostport(value: str) -> None:
    if value:
        check_hostport(value)


def _check_domains(values: list[str]) -> None:
    for v in values:
        name = v[1:] if v.startswith(".") else v
        if not name or " " in name or "@" in name or ".." in name:
            raise ValueError(f"{v!r} is not a domain name (e.g. example.com, or .example.com "
                             f"for its subdomains too)")


LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"]


@dataclass
class ListenerConfig:
    address: str = setting("127.0.0.1:10025", "HOST:PORT to listen on ([::1]:PORT for IPv6)",
                           check=check_hostport)
    role: Literal["inbound", "submission"] = setting(
        "inbound", "inbound: verify, apply the policy, add Authentication-Results; "
                   "submission: DKIM-sign outbound mail and relay it")
    upstream: str = setting("", "HOST:PORT this listener relays to; empty = proxy.upstream",
                            check=_check_optional_hostport)
    tls_cert: str = setting("", "PEM certificate chain file; when set, STARTTLS is offered "
                                "(port-25-facing mode)")
    tls_key: str = setting("", "PEM private key for tls_cert; empty = the key is in tls_cert")
    proxy_protocol: bool = setting(False, "connections start with a PROXY protocol v1/v2 header "
                                          "(HAProxy); only from proxy.proxy_protocol_hosts")
    arc_seal: bool = setting(False, "inbound: add an ARC set (RFC 8617) built from our "
                                    "Authentication-Results to mail we relay; needs [signing.arc]")


def check_milter_address(value: str) -> None:
    if value.startswith("unix:"):
        if not value[5:].startswith("/"):
            raise ValueError(f"{value!r}: a unix socket needs an absolute path "
                             f"(unix:/run/authfilter/milter.sock)")
        return
    check_hostport(value)


@dataclass
class MilterListenerConfig:
    address: str = setting("127.0.0.1:10030", "unix:/ABSOLUTE/PATH (the usual choice with Postfix: "
                                              "unix:/run/authfilter/milter.sock) or HOST:PORT",
                           check=check_milter_address)
    role: Literal["inbound", "submission", "local"] = setting(
        "inbound", "inbound (smtpd_milters): verify, apply the policy, add Authentication-Results; "
                   "submission (the submission service's smtpd_milters): DKIM-sign; local "
                   "(non_smtpd_milters): DKIM-sign, never refuse")
    arc_seal: bool = setting(False, "inbound: add an ARC set (RFC 8617); needs [signing.arc]")
    socket_mode: int = setting(0o660, "permissions of a unix socket (TOML 0o660): the postfix user "
                                      "must be able to connect, e.g. through socket_group",
                               minimum=0, maximum=0o777)
    socket_group: str = setting("", "group of a unix socket; empty = postfix when we may give it "
                                    "the socket (root), else ours (install-service puts the "
                                    "postfix user in it)")


@dataclass
class MilterConfig:
    listeners: list[MilterListenerConfig] = setting(
        [MilterListenerConfig()], "where to listen for Postfix's (or Sendmail's) milter "
                                  "connections, one [[milter.listeners]] table each; [] = none")
    max_sessions: int = setting(200, "concurrent milter connections, all workers together (each "
                                     "takes an equal share); more are closed at once (Postfix "
                                     "then applies its milter default_action)",
                                minimum=1, maximum=100_000)
    max_message_size: int = setting(10_240_000, "bytes of header and body; keep >= Postfix's "
                                                "message_size_limit", minimum=1024, maximum=1 << 30)
    oversize: Literal["tempfail", "accept"] = setting(
        "tempfail", "a message over max_message_size: 451 (accepting it unchecked would let "
                    "padding carry a spoof past p=reject), or accept it unchecked")


@dataclass
class ProxyConfig:
    listeners: list[ListenerConfig] = setting(
        [ListenerConfig()], "where to listen and in which role (one [[proxy.listeners]] table each)")
    upstream: str = setting("127.0.0.1:10026", "HOST:PORT of the MTA that gets accepted mail "
                                               "(Postfix's reinjection smtpd)", check=check_hostport)
    hostname: str = setting("", "name in our greeting and EHLO reply; empty = the authserv-id")
    workers: int = setting(0, "worker processes sharing the listening ports (the proxy's: "
                              "SO_REUSEPORT; a milter listener's fills the first worker, the "
                              "next takes connections when it is busy); 0 = one per CPU core",
                           minimum=0, maximum=256)
    max_sessions: int = setting(200, "concurrent SMTP sessions, all workers together (each takes "
                                     "an equal share); more get 421 4.3.2", minimum=1, maximum=100_000)
    max_message_size: int = setting(10_240_000, "bytes; advertised as SIZE, larger messages get "
                                                "552 5.3.4 (keep >= Postfix message_size_limit)",
                                    minimum=1024, maximum=1 << 30)
    max_recipients: int = setting(1000, "recipients per message; more get 452 4.5.3",
                                  minimum=1, maximum=100_000)
    max_line_length: int = setting(2048, "bytes in one SMTP command line (RFC 5321 s. 4.5.3.1 "
                                         "allows 512 plus extension parameters); message lines are "
                                         "limited only by max_message_size", minimum=512, maximum=65536)
    max_errors: int = setting(20, "protocol errors in one session before 421 4.7.0 and disconnect",
                              minimum=1, maximum=1000)
    command_timeout: float = setting(300.0, "seconds a command line may take to arrive whole (a "
                                            "byte now and then does not extend it), then 421 "
                                            "4.4.2 (RFC 5321 s. 4.5.3.2.7)", minimum=1, maximum=3600)
    data_timeout: float = setting(300.0, "seconds with no message data during DATA, then 421 4.4.2",
                                  minimum=1, maximum=3600)
    data_deadline: float = setting(900.0, "seconds a whole DATA phase may take, however steadily "
                                          "the bytes trickle in, then 421 4.4.2 (10 MB at 90 "
                                          "kbit/s fits)", minimum=1, maximum=86400)
    max_sessions_per_client: int = setting(
        20, "concurrent sessions from one client address (the socket's or the PROXY header's; "
            "xforward_hosts peers such as Postfix are not counted), all workers together; more "
            "get 421 4.7.0; 0 = no limit", minimum=0, maximum=100_000)
    max_sessions_per_network: int = setting(
        50, "concurrent sessions from one /24 (IPv4) or /64 (IPv6), counted as above; 0 = no "
            "limit", minimum=0, maximum=100_000)
    upstream_timeout: float = setting(60.0, "seconds to connect to the upstream and for each of its "
                                            "replies; message_deadline + this must stay under "
                                            "Postfix's smtpd_proxy_timeout (100 s)",
                                      minimum=1, maximum=600)
    upstream_idle: float = setting(10.0, "seconds an idle upstream connection is kept for the next "
                                         "message; 0 = a new connection per message",
                                   minimum=0, maximum=300)
    xforward_hosts: list[str] = setting(LOOPBACK_NETWORKS, "peers allowed to send XFORWARD (Postfix's "
                                                           "before-queue smtpd); only they see it in EHLO",
                                        check=_check_networks)
    proxy_protocol_hosts: list[str] = setting(LOOPBACK_NETWORKS, "peers allowed to send a PROXY "
                                                                 "protocol header (listeners with "
                                                                 "proxy_protocol = true)",
                                              check=_check_networks)
    drain_timeout: float = setting(120.0, "on SIGTERM, seconds the sessions in progress get to finish",
                                   minimum=0, maximum=3600)
    offload_workers: int = setting(1, "processes per worker that verify big messages so that they "
                                      "do not stall other sessions; 0 = verify in the worker",
                                   minimum=0, maximum=64)
    event_loop: Literal["auto", "asyncio", "uvloop"] = setting(
        "auto", "auto: uvloop when it is installed (about a quarter less CPU per message), "
                "else asyncio")


@dataclass
class PolicyConfig:
    name: str = setting("default", "policy to apply: NAME loads NAME.toml from policy.directory, "
                                   "/etc/authfilter/policies or the bundled policies/; or a .toml path")
    directory: str = setting("", "directory searched first for policy files")
    dry_run: bool = setting(False, "decide as usual but only tag: every message is accepted with "
                                   "Authentication-Results and the would-be action is logged")
    trusted_networks: list[str] = setting(LOOPBACK_NETWORKS, "clients whose mail is not verified "
                                                             "(local submission, internal relays)",
                                          check=_check_networks)
    trusted_checks: Literal["none", "dkim"] = setting(
        "none", "what runs for trusted_networks: none, or dkim (DKIM only; never acted on)")
    allow_ips: list[str] = setting([], "client networks always accepted (verified and tagged, "
                                       "never rejected)", check=_check_networks)
    allow_domains: list[str] = setting([], "From or MAIL FROM domains always accepted (verified and "
                                           "tagged); '.example.com' also matches subdomains; anyone "
                                           "can claim a domain, so keep this short",
                                       check=_check_domains)
    arc_trusted_sealers: list[str] = setting([], "ARC sealers (d= of the newest ARC-Seal) whose "
                                                 "validated chain (cv=pass) overrides a DMARC failure",
                                             check=_check_domains)
    deny_ips: list[str] = setting([], "client networks refused with 554 5.7.1 at RCPT, before any "
                                      "DNS work (they beat allow_ips)", check=_check_networks)
    deny_ips_file: str = setting("", "a file of more deny_ips, one network per line (# comments), "
                                     "read at start and on every reload (SIGHUP)")
    deny_domains: list[str] = setting([], "MAIL FROM domains refused at RCPT and From domains "
                                          "refused at the end of the message (554 5.7.1); "
                                          "'.example.com' also matches subdomains",
                                      check=_check_domains)


def _check_store_url(value: str) -> None:
    if value and not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ValueError(f"{value!r} is not sqlite:///PATH or postgresql://USER@HOST/DB")


def _check_report_period(value: int) -> None:
    if 86400 % value:
        raise ValueError(f"{value} does not divide a day (86400 s) evenly; e.g. 3600, 21600, 86400")


def _check_suppressed(values: list[str]) -> None:
    for v in values:
        if not v or " " in v or v.count("@") > 1:
            raise ValueError(f"{v!r} is not a domain or an address")


@dataclass
class ReportsConfig:
    """DMARC aggregate reports (RFC 9990)."""

    enabled: bool = setting(True, "record every DMARC evaluation for aggregate reports")
    store: str = setting("", "sqlite:///PATH or postgresql://USER@HOST/DB (shared by several "
                             "nodes); empty = $STATE_DIRECTORY/reports.sqlite, else "
                             "/var/lib/authfilter/reports.sqlite if writable, else "
                             "~/.local/state/authfilter/reports.sqlite", check=_check_store_url)
    org_name: str = setting("", "reporting organization in the reports; empty = submitter")
    submitter: str = setting("", "our domain in report subjects and file names; empty = the "
                                 "authserv-id")
    contact_email: str = setting("", "contact address in the reports; empty = from_address")
    from_address: str = setting("", "From of report messages; empty = dmarc-reports@SUBMITTER. "
                                     "Reports must pass DMARC (RFC 9990 \"Email\"): sign them")
    period: int = setting(86400, "seconds each report covers, aligned to UTC midnight",
                          minimum=3600, maximum=86400, check=_check_report_period)
    send_delay: int = setting(900, "seconds after a period ends before its report is sent, so "
                                   "every node has flushed its rows", minimum=0, maximum=86400)
    retry_for: int = setting(172800, "seconds a report that could not be delivered is retried",
                             minimum=0, maximum=30 * 86400)
    retention_days: int = setting(14, "days recorded rows are kept (report show, regeneration)",
                                  minimum=1, maximum=3650)
    relay_host: str = setting("127.0.0.1", "SMTP relay that delivers report messages")
    relay_port: int = setting(25, "relay port", minimum=1, maximum=65535)
    relay_starttls: Literal["off", "opportunistic", "required"] = setting(
        "opportunistic", "STARTTLS to the relay (certificate verified unless relay_tls_verify = false)")
    relay_tls_verify: bool = setting(True, "verify the relay's certificate and host name")
    relay_ca_file: str = setting("", "PEM CA bundle for the relay; empty = the system's")
    relay_user: str = setting("", "AUTH user for the relay; empty = no AUTH (needs TLS)")
    relay_password_file: str = setting("", "file holding the relay password (first line)")
    relay_timeout: float = setting(30.0, "seconds for each relay operation", minimum=1, maximum=300)
    suppress: list[str] = setting([], "never report about or to these: a domain (and its "
                                      "subdomains) or an address", check=_check_suppressed)
    max_destinations: int = setting(5, "rua URIs used per report (RFC 9990 \"Transport\")", minimum=1,
                                    maximum=20)
    rfc7489_xml: bool = setting(False, "write RFC 7489 Appendix C XML (no namespace, pct) instead "
                                       "of RFC 9990")
    envelope_to: bool = setting(False, "include the recipient domain (when a message had one) in "
                                       "the reports; it splits rows per recipient domain")
    buffer_rows: int = setting(100_000, "rows kept in memory while the store is slow or down; "
                                        "more are dropped with a log line", minimum=100,
                               maximum=10_000_000)
    batch_rows: int = setting(500, "rows written to the store in one transaction", minimum=1,
                              maximum=100_000)
    flush_interval: float = setting(2.0, "seconds between writes of buffered rows", minimum=0.05,
                                    maximum=300)
    failure_enabled: bool = setting(False, "send DMARC failure reports (RFC 9991) to ruf= "
                                           "addresses, as fo= asks, through the relay above")
    failure_rate_limit: int = setting(10, "failure reports per policy domain per hour, in each "
                                          "worker process; more are dropped", minimum=1,
                                      maximum=10_000)
    failure_redact: bool = setting(True, "replace local parts of addresses in failure reports "
                                         "with a keyed hash (the message body is never sent)")
    failure_max_bytes: int = setting(16_384, "bytes of the original header block a failure "
                                             "report includes (whole fields)", minimum=1024,
                                     maximum=1 << 20)


# -- signing: DKIM signing and ARC sealing (authfilter/signing/) ---------------------------------
# RFC 6376 s. 5.4.1's list, plus Message-ID, Sender, the MIME headers and List-Unsubscribe-Post
# (RFC 8058 s. 4 requires it to be signed).
SIGNED_HEADERS = [
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc", "mime-version",
    "content-type", "content-transfer-encoding", "content-id", "content-description",
    "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-message-id",
    "in-reply-to", "references", "list-id", "list-help", "list-unsubscribe",
    "list-unsubscribe-post", "list-subscribe", "list-post", "list-owner", "list-archive",
]
# Header fields the ARC-Message-Signature must not cover (RFC 8617 s. 4.1.2).
ARC_UNSIGNABLE = ("arc-seal", "arc-message-signature", "arc-authentication-results",
                  "authentication-results")


def _check_field_names(values: list[str]) -> None:
    for v in values:
        if not v or not all(33 <= ord(c) <= 126 and c != ":" for c in v):
            raise ValueError(f"{v!r} is not a header field name")


def _check_signing_domain(value: str) -> None:
    if value:
        from .addresses import AddressError, normalize_domain
        try:
            normalize_domain(value)
        except AddressError as exc:
            raise ValueError(str(exc)) from None


def _check_from_patterns(values: list[str]) -> None:
    for v in values:
        _check_signing_domain(v[2:] if v.startswith("*.") else v)
        if not v or "*" in (v[2:] if v.startswith("*.") else v):
            raise ValueError(f"{v!r} is not a domain or *.domain")


def check_selector(value: str) -> None:
    labels = value.split(".")
    if value and not all(0 < len(x) <= 63 and all(c.isalnum() or c in "-_" for c in x)
                         and x.isascii() for x in labels):
        raise ValueError(f"{value!r} is not a selector (dot-separated labels, RFC 6376 s. 3.1)")


@dataclass
class SigningKeyConfig:
    domain: str = setting("", "signing domain d=; the public key is published at "
                              "SELECTOR._domainkey.DOMAIN", check=_check_signing_domain)
    selector: str = setting("", "selector s=", check=check_selector)
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = setting(
        "rsa-sha256", "rsa-sha256 or ed25519-sha256 (RFC 8463); give a domain one active key of "
                      "each to dual-sign")
    key_file: str = setting("", "PEM private key (authfilter keygen writes one); refused if group "
                                "or others can access it")
    active: bool = setting(True, "sign with this key; keep the old key inactive during rotation "
                                 "so that `authfilter keys check` still watches its record")
    from_domains: list[str] = setting([], "From domains signed with this key: example.com, or "
                                          "*.example.com for every subdomain; empty = [domain]",
                                      check=_check_from_patterns)


@dataclass
class ArcSealConfig:
    domain: str = setting("", "sealing domain d= of our ARC sets; empty = no ARC sealing "
                              "(listeners turn sealing on)", check=_check_signing_domain)
    selector: str = setting("", "selector s= of the sealing key", check=check_selector)
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = setting(
        "rsa-sha256", "RFC 8617 allows one ARC set per hop, so one algorithm; ed25519-sha256 "
                      "seals are not validated by most receivers yet")
    key_file: str = setting("", "PEM private key for sealing; refused if group or others can "
                                "access it")
    headers: list[str] = setting(SIGNED_HEADERS + ["dkim-signature"],
                                 "header fields the ARC-Message-Signature covers when present",
                                 check=_check_field_names)


@dataclass
class SigningConfig:
    """DKIM signing of outbound mail (RFC 6376, 8463) and ARC sealing (RFC 8617)."""

    canonicalization: Literal["relaxed/relaxed", "relaxed/simple", "simple/relaxed",
                              "simple/simple"] = setting(
        "relaxed/relaxed", "c= header/body canonicalization of our DKIM signatures")
    headers: list[str] = setting(SIGNED_HEADERS, "header fields signed, every instance present "
                                                 "(From is required)", check=_check_field_names)
    oversign: list[str] = setting(["from", "to", "cc", "subject", "reply-to"],
                                  "signed once more than present, even when absent, so that none "
                                  "can be added", check=_check_field_names)
    oversign_if_present: list[str] = setting(
        ["date", "mime-version", "content-type", "content-transfer-encoding"],
        "signed once more than present when present (Postfix may add a missing Date)",
        check=_check_field_names)
    keys: list[SigningKeyConfig] = setting([], "the signing table: one [[signing.keys]] per key")
    arc: ArcSealConfig = section(ArcSealConfig, "ARC sealing key and signed headers")

    def __post_init__(self) -> None:
        if "from" not in [h.lower() for h in self.headers]:
            raise ValueError("headers must include from (RFC 6376 s. 5.4)")
        active: dict[tuple[str, str], int] = {}
        for i, key in enumerate(self.keys):
            missing = [n for n in ("domain", "selector", "key_file") if not getattr(key, n)]
            if missing:
                raise ValueError(f"keys[{i}]: {', '.join(missing)} not set")
            for pattern in key.from_domains or [key.domain]:
                slot = (pattern.lower(), key.algorithm)
                if key.active and slot in active:
                    raise ValueError(f"keys[{active[slot]}] and keys[{i}] are both active "
                                     f"{key.algorithm} keys for {pattern}; mark one active = false")
                if key.active:
                    active[slot] = i
        arc = self.arc
        if arc.domain and not (arc.selector and arc.key_file):
            raise ValueError("arc: selector and key_file must be set with domain")
        bad = [h for h in arc.headers if h.lower() in ARC_UNSIGNABLE]
        if bad:
            raise ValueError(f"arc.headers: {', '.join(bad)} must not be signed (RFC 8617 s. 4.1.2)")


# -- ratelimit: rate limits shared by every worker and node, in Redis (authfilter/ratelimit.py) --
RATE_KEYS = ("client_ip", "client_net", "sender_domain", "auth_user", "recipient")
RATE_ROLES = ("inbound", "submission")


def _check_redis_url(value: str) -> None:
    """redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS) or unix:///PATH[?db=DB];
    checked here without importing redis."""
    from urllib.parse import parse_qs, urlsplit
    shape = (f"{value!r} is not redis://HOST[:PORT][/DB], rediss://HOST[:PORT][/DB] or "
             f"unix:///PATH[?db=DB]")
    try:
        url = urlsplit(value)
        port = url.port                       # raises ValueError for a bad port
    except ValueError:
        raise ValueError(shape) from None
    if url.scheme in ("redis", "rediss"):
        db = url.path.strip("/")
        if not url.hostname or (db and not db.isdigit()) or (port is not None and not port):
            raise ValueError(shape)
    elif url.scheme == "unix":
        db = parse_qs(url.query).get("db", ["0"])[0]
        if not url.path.startswith("/") or url.netloc or not db.isdigit():
            raise ValueError(shape)
    else:
        raise ValueError(shape)


def _check_key_prefix(value: str) -> None:
    if not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError(f"{value!r}: use printable ASCII without spaces (e.g. authfilter:rl:)")


def _check_rate_roles(values: list[str]) -> None:
    if not values:
        raise ValueError(f"give {' or '.join(RATE_ROLES)} or both (local mail is never refused)")
    if len(set(values)) != len(values):
        raise ValueError(f"{values!r} names a role twice")


def _check_rule_name(value: str) -> None:
    if len(value) > 64 or not all(33 <= ord(c) <= 126 and c not in "\\\"" for c in value):
        raise ValueError(f"{value!r}: up to 64 printable ASCII characters, no spaces or quotes "
                         f"(it labels logs and metrics)")


MAX_RATE = 1_000_000
"""Tokens per second one rule may give back: an interval below 1 us is not a rate limit."""


@dataclass
class RateRuleConfig:
    key: Literal["client_ip", "client_net", "sender_domain", "auth_user", "recipient"] = setting(
        "client_ip", "what is counted: client_ip (the client address), client_net (its "
                     "network, see ipv4_prefix/ipv6_prefix), sender_domain (MAIL FROM's domain; "
                     "not the null sender), auth_user (the SASL login), each once per message; "
                     "recipient (each RCPT address, once per recipient)")
    limit: int = setting(100, "messages (recipients for key = recipient) per period: the bucket "
                              "holds this many, one comes back every period/limit seconds",
                         minimum=1, maximum=1_000_000_000)
    period: float = setting(3600.0, "seconds", minimum=1, maximum=31 * 86400)
    action: Literal["tempfail", "reject"] = setting(
        "tempfail", "what a client over the limit gets at RCPT: tempfail (451 4.7.28, with a "
                    "retry hint) or reject (550 5.7.28)")
    name: str = setting("", "the rule's label in logs, metrics and Redis keys; empty = "
                            "KEY/PERIODs, e.g. client_ip/3600s", check=_check_rule_name)
    roles: list[Literal["inbound", "submission"]] = setting(
        list(RATE_ROLES), "listener roles counted: inbound, submission (local mail is never "
                          "refused)", check=_check_rate_roles)
    trusted: bool = setting(False, "also count clients in policy.trusted_networks (and others "
                                   "vouched for); auth_user rules count a logged-in user "
                                   "whatever the trust, since logging in is what the milter "
                                   "trusts")
    ipv4_prefix: int = setting(24, "key = client_net: IPv4 network length", minimum=8, maximum=32)
    ipv6_prefix: int = setting(64, "key = client_net: IPv6 network length", minimum=16, maximum=128)

    def __post_init__(self) -> None:
        if self.limit / self.period > MAX_RATE:
            raise ValueError(f"limit {self.limit} per {self.period:g} s is over {MAX_RATE:,} "
                             f"per second")

    @property
    def label(self) -> str:
        return self.name or f"{self.key}/{self.period:g}s"


@dataclass
class RateLimitConfig:
    redis: str = setting("redis://127.0.0.1:6379/0", "Redis shared by every worker and node: "
                                                     "redis://[:PASSWORD@]HOST[:PORT][/DB], "
                                                     "rediss:// (TLS) or unix:///PATH[?db=DB]; "
                                                     "asked only when rules are set",
                         check=_check_redis_url)
    on_redis_error: Literal["accept", "tempfail"] = setting(
        "accept", "when Redis cannot be asked in time: accept (the limiter failing never loses or "
                  "refuses mail) or tempfail (451 4.3.0)")
    timeout: float = setting(0.5, "seconds one Redis round trip may take (and never more than "
                                  "what is left of the RCPT wait)", minimum=0.01, maximum=10)
    error_backoff: float = setting(2.0, "seconds Redis is left alone after a failure, answering "
                                        "as on_redis_error says meanwhile, so that mail does not "
                                        "wait for the timeout while it is down", minimum=0,
                                   maximum=300)
    key_prefix: str = setting("authfilter:rl:", "prefix of our Redis keys (one key per bucket, "
                                                "expiring on its own)", check=_check_key_prefix)
    rules: list[RateRuleConfig] = setting([], "the limits, one [[ratelimit.rules]] table each; "
                                              "[] = none (Redis is never contacted)")

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.label in seen:
                raise ValueError(f"rules[{i}].name: {rule.label!r} is also the name of "
                                 f"rules[{seen[rule.label]}]; give each rule its own name")
            seen[rule.label] = i


@dataclass
class Config:
    general: GeneralConfig = section(GeneralConfig, "identity and overall deadline")
    dns: DnsConfig = section(DnsConfig, "the resolver every check uses")
    spf: SpfConfig = section(SpfConfig, "SPF (RFC 7208)")
    iprev: IprevConfig = section(IprevConfig, "reverse DNS of the client (iprev, RFC 8601 s. 3)")
    dnsbl: DnsblConfig = section(DnsblConfig, "DNS blocklists and allowlists (RFC 5782)")
    dkim: DkimConfig = section(DkimConfig, "DKIM verification (RFC 6376, 8301, 8463)")
    arc: ArcConfig = section(ArcConfig, "ARC validation (RFC 8617)")
    dmarc: DmarcConfig = section(DmarcConfig, "DMARC (RFC 9989)")
    logging: LoggingConfig = section(LoggingConfig, "logging")
    metrics: MetricsConfig = section(MetricsConfig, "the Prometheus endpoint")
    proxy: ProxyConfig = section(ProxyConfig, "the SMTP proxy: listeners, upstream, limits")
    milter: MilterConfig = section(MilterConfig, "the milter front-end (Postfix smtpd_milters, "
                                                 "non_smtpd_milters; Sendmail)")
    policy: PolicyConfig = section(PolicyConfig, "what to do with the verdict, and local exceptions")
    reports: ReportsConfig = section(ReportsConfig, "DMARC aggregate reports (RFC 9990)")
    signing: SigningConfig = section(SigningConfig, "DKIM signing (RFC 6376, 8463) and ARC sealing (RFC 8617)")
    ratelimit: RateLimitConfig = section(RateLimitConfig, "rate limits at RCPT, shared by every "
                                                          "worker and node in Redis")
    source: str | None = field(default=None, metadata={"internal": True})


# -- loading --------------------------------------------------------------------------------
def load(path: str | Path | None = None) -> Config:
    """Load and validate a config file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{p}: no such file"]) from None
    except PermissionError:
        raise ConfigError([f"{p}: permission denied"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: not valid TOML: {exc}"]) from None
    cfg = from_dict(data)
    cfg.source = str(p)
    return cfg


def from_dict(data: dict[str, Any]) -> Config:
    problems: list[str] = []
    cfg = _build(Config, data, "", problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def build_section(cls: type, data: Any, problems: list[str]) -> Any:
    """Any settings dataclass (e.g. a policy file's) from plain data; problems are collected."""
    return _build(cls, data, "", problems)


def _public_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{path or '(top level)'}: expected a table, got {_show(data)}")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in _public_fields(cls)}
    for key in data:
        if key not in known:
            where = f"{path}.{key}" if path else key
            close = [k for k in known if k.replace("_", "") == key.replace("_", "").replace("-", "")]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{where}: unknown key{hint}")
    kwargs = {}
    for name, f in known.items():
        if name not in data:
            continue
        where = f"{path}.{name}" if path else name
        kwargs[name] = _convert(hints[name], data[name], where, f.metadata, problems)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"{path or '(top level)'}: {exc}")
        return cls()


def _convert(tp: Any, value: Any, where: str, meta: Any, problems: list[str]) -> Any:
    before = len(problems)
    out = _convert_type(tp, value, where, problems)
    if len(problems) > before:
        return out
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        if lo is not None and out < lo:
            problems.append(f"{where}: {out} is below the minimum {lo}")
        elif hi is not None and out > hi:
            problems.append(f"{where}: {out} is above the maximum {hi}")
    check = meta.get("check")
    if check is not None:
        try:
            check(out)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    return out


def _convert_type(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, problems)
    if origin is Literal:
        if value not in args:
            problems.append(f"{where}: {_show(value)} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert_type(inner[0], value, where, problems)
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {_show(value)}")
            return []
        return [_convert_type(args[0], v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a table, got {_show(value)}")
            return {}
        return {k: _convert_type(args[1], v, f"{where}.{k}", problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, got {_show(value)}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {_show(value)}")
        return value
    return value


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


# -- showing --------------------------------------------------------------------------------
def to_dict(cfg: Any) -> dict[str, Any]:
    """The effective config as plain data (for ``authfilter config show``)."""
    out = {}
    for f in _public_fields(type(cfg)):
        v = getattr(cfg, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else \
            [to_dict(x) if dataclasses.is_dataclass(x) else x for x in v] if isinstance(v, list) else \
            {k: to_dict(x) if dataclasses.is_dataclass(x) else x for k, x in v.items()} \
            if isinstance(v, dict) else v
    return out


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Serialise :func:`to_dict` output as TOML: plain keys first, then sub-tables."""
    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            tables.append((k, v))
        elif v is not None:
            lines.append(f"{_key(k)} = {_value(v)}")
    out = "\n".join(lines)
    for k, v in tables:
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        items = v if isinstance(v, list) else [v]
        header = f"[[{name}]]" if isinstance(v, list) else f"[{name}]"
        for item in items:
            out += f"\n\n{header}\n" + to_toml(item, name).strip("\n")
    return out.strip("\n") + "\n"


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def reference(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) rows for every setting, for the README's config reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in _public_fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            rows.append((f"[{key}]", "section", "", f.metadata.get("doc", "")))
            rows.extend(reference(tp, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = json.dumps(default, default=to_dict)
        rows.append((key, _type_name(tp), shown, f.metadata.get("doc", "")))
        element = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if element is not None and dataclasses.is_dataclass(element):
            rows.extend(reference(element, key + "[]."))   # the keys of each [[table]]
    return rows


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"table of {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "table"
    return getattr(tp, "__name__", str(tp))


def reference_markdown() -> str:
    """The config reference as a Markdown table (the README carries exactly this)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, doc in reference():
        shown = f"`{default}`" if default else ""
        if len(shown) > 60:                      # long lists: see `authfilter config show`
            shown = "see `authfilter config show`"
        lines.append(f"| `{key}` | {typ.replace('|', '/')} | {shown} | {doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
