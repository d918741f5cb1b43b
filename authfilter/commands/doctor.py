"""``authfilter doctor DOMAIN``: is this domain's published mail authentication right?
(``authfilter doctor IP``: :mod:`.doctor_ip`.)

It reads what receivers read (every lookup through our :class:`~authfilter.dns.Resolver`, so
``--dns`` and the config's nameservers apply and a dead server is one clear line) and prints
one line per finding, OK / WARN / FAIL, with the problem and how to fix it:

* **SPF** (RFC 7208): exactly one ``v=spf1`` record, its syntax (:mod:`authfilter.spfrecord`),
  the DNS-querying terms of the whole include/redirect tree (at most 10) and void lookups (at
  most 2), s. 4.6.4, and the ``all`` it ends with.  The count is static: every term a message
  matching nothing needs.
* **DMARC** (RFC 9989): the policy a receiver finds by the DNS Tree Walk (shared with the filter,
  :mod:`authfilter.checks.dmarc`), the record's problems, and whether it enforces anything.
* **Report destinations** (RFC 9990): ``rua``/``ruf`` mailto URIs, external destinations
  authorized by ``<domain>._report._dmarc.<host>`` (the reporter's own check,
  :mod:`authfilter.reports.destinations`), and whether the address can receive mail.
* **DKIM**: the selectors of the config's ``[[signing.keys]]`` for the domain plus ``--selector``:
  a published, usable key (RFC 6376 s. 3.6.1, RFC 8301 sizes) that matches the private key file.

Exit status: 1 when any FAIL, 0 otherwise, 2 for usage errors.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field

from ..spfrecord import (DNS_MECHANISMS, Mechanism, Modifier, cidr_problem, domain_spec_problem,
                         domain_target, final_all, has_macro, ip_problem, parse_term, spf_records,
                         terms)
from .common import add_config_argument, load_config_or_exit

OK, WARN, FAIL = "ok", "warn", "fail"
DEADLINE = 60.0             # seconds for the whole diagnosis, whatever the DNS does

# RFC 7208 s. 4.6.4: processing limits.
SPF_LOOKUP_LIMIT = 10
SPF_VOID_LIMIT = 2
SPF_MX_LIMIT = 10
SPF_FOLLOW_LIMIT = 40       # records fetched at most; far past the limit the count is moot


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check a domain's SPF, DMARC, report and DKIM records, or "
                                      "an IP address's reverse DNS and blocklistings",
                       description="Check what a domain publishes for mail authentication, or "
                                   "how receivers see a sending IP address (iprev, the "
                                   "configured DNS blocklists), and say what to fix.  Exit "
                                   "status 1 when something is broken.")
    p.add_argument("domain", help="the domain to check, e.g. example.com, or an IP address")
    add_config_argument(p)
    p.add_argument("--dns", metavar="HOST[:PORT]", action="append",
                   help="nameserver to ask instead of the configured ones (repeatable)")
    p.add_argument("--selector", "-s", action="append", default=[],
                   help="a DKIM selector to check besides the configured ones (repeatable)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="seconds one DNS lookup may take (default: dns.lifetime of the config)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Finding:
    level: str              # ok | warn | fail
    area: str               # dns | spf | dmarc | reports | dkim | iprev | dnsbl
    message: str
    fix: str | None = None


@dataclass
class Findings:
    items: list[Finding] = field(default_factory=list)

    def ok(self, area: str, message: str) -> None:
        self.items.append(Finding(OK, area, message))

    def warn(self, area: str, message: str, fix: str | None = None) -> None:
        self.items.append(Finding(WARN, area, message, fix))

    def fail(self, area: str, message: str, fix: str | None = None) -> None:
        self.items.append(Finding(FAIL, area, message, fix))


@dataclass(frozen=True)
class Selector:
    name: str
    key: object | None = None       # the SigningKeyConfig that names it, if any


# -- the command ------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from ..addresses import AddressError, normalize_domain
    from ..dns import Resolver, parse_nameserver

    config = load_config_or_exit(args.config)
    try:
        ip = ipaddress.ip_address(args.domain.strip().strip("[]"))
    except ValueError:
        ip = None
    try:
        domain = str(ip) if ip is not None else normalize_domain(args.domain)
    except AddressError as exc:
        return _usage_error(str(exc))
    if ip is None and "." not in domain:
        return _usage_error(f"{domain!r} is a top-level domain; give the mail domain")
    try:
        for server in args.dns or ():
            parse_nameserver(server)
    except ValueError as exc:
        return _usage_error(f"--dns: {exc}")
    if args.timeout is not None and not 0.05 <= args.timeout <= 60:
        return _usage_error("--timeout: give between 0.05 and 60 seconds")
    selectors = _selectors(config, domain, args.selector)
    if isinstance(selectors, str):
        return _usage_error(selectors)

    lifetime = args.timeout or config.dns.lifetime
    resolver = Resolver(args.dns or config.dns.nameservers, timeout=min(config.dns.timeout, lifetime),
                        lifetime=lifetime)
    if ip is not None:
        from .doctor_ip import diagnose_ip
        findings = asyncio.run(diagnose_ip(ip, resolver, config))
    else:
        findings = asyncio.run(diagnose(domain, resolver, selectors))
    failed = any(f.level == FAIL for f in findings)
    if args.json:
        json.dump({"domain": domain, "nameservers": resolver.nameservers, "ok": not failed,
                   "counts": {level: sum(f.level == level for f in findings) for level in (OK, WARN, FAIL)},
                   "findings": [asdict(f) for f in findings]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(domain, resolver.nameservers, findings))
    return 1 if failed else 0


def _usage_error(message: str) -> int:
    sys.stderr.write(f"authfilter doctor: error: {message}\n")
    return 2


def _selectors(config, domain: str, extra: list[str]) -> list[Selector] | str:
    """The configured keys for ``domain`` (their files are compared) and ``--selector`` ones."""
    out = [Selector(k.selector.lower(), k) for k in config.signing.keys if k.domain.lower() == domain]
    for name in extra:
        name = name.strip().lower()
        if not re.fullmatch(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*", name):
            return f"--selector: {name!r} is not a selector (RFC 6376 s. 3.1)"
        if name not in {s.name for s in out}:
            out.append(Selector(name))
    return out


def render(domain: str, nameservers: list[str], findings: list[Finding]) -> str:
    lines = [f"authfilter doctor {domain} (DNS: {', '.join(nameservers)})"]
    for f in findings:
        lines.append(f"{f.level.upper():<5} {f.area:<8} {f.message}")
        if f.fix:
            lines.append(f"{'':<15}fix: {f.fix}")
    fails = sum(f.level == FAIL for f in findings)
    warns = sum(f.level == WARN for f in findings)
    verdict = "something is broken" if fails else "no problems" if not warns else "works, with warnings"
    lines.append(f"{domain}: {fails} problem(s), {warns} warning(s): {verdict}")
    return "\n".join(lines) + "\n"


# -- the diagnosis ----------------------------------------------------------------------------
async def diagnose(domain: str, resolver, selectors: list[Selector]) -> list[Finding]:
    deadline = time.monotonic() + DEADLINE
    first = await resolver.query(domain, "TXT", deadline=deadline)
    if first.status == "temperror":
        return [Finding(FAIL, "dns", f"the DNS server ({', '.join(resolver.nameservers)}) did not "
                        f"answer for {domain} TXT: {first.reason}",
                        "check that the nameserver runs and is reachable, or name another with "
                        "--dns HOST:PORT")]
    if first.status == "nxdomain":
        return [Finding(FAIL, "dns", f"{domain} does not exist in the DNS (NXDOMAIN)",
                        "check the spelling, or publish the domain's zone")]
    spf, dmarc, dkim = Findings(), Findings(), Findings()
    await asyncio.gather(check_spf(domain, resolver, deadline, spf),
                         check_dmarc(domain, resolver, deadline, dmarc),
                         check_dkim(domain, selectors, resolver, deadline, dkim))
    return spf.items + dmarc.items + dkim.items


# -- SPF (RFC 7208) ---------------------------------------------------------------------------
@dataclass
class SpfWalk:
    """One walk over an SPF record and every record it includes or redirects to."""

    resolver: object
    deadline: float
    findings: Findings
    lookups: int = 0
    void: int = 0
    fetched: int = 0

    async def record(self, domain: str, text: str, chain: tuple[str, ...]) -> None:
        where = f"{domain}: " if len(chain) > 1 else ""
        modifiers: dict[str, str] = {}
        has_all = False
        for term in terms(text):
            parsed = parse_term(term)
            if isinstance(parsed, Modifier):
                name = parsed.name
                if name in ("redirect", "exp") and name in modifiers:
                    self.findings.fail("spf", f"{where}{name}= appears twice: receivers return "
                                       f"permerror (RFC 7208 s. 6)", f"keep one {name}=")
                modifiers.setdefault(name, parsed.value)
                if name in ("redirect", "exp"):
                    problem = domain_spec_problem(parsed.value)
                    if problem:
                        self.findings.fail("spf", f"{where}{name}=: {problem}")
                continue
            if has_all:
                self.findings.warn("spf", f"{where}{term!r} comes after 'all' and is never used "
                                   f"(RFC 7208 s. 5.1)", "remove it or move it before all")
                continue
            has_all = await self.mechanism(domain, term, parsed, chain, where) or has_all
        redirect = modifiers.get("redirect")
        if redirect and has_all:
            self.findings.warn("spf", f"{where}redirect={redirect} is ignored because the record "
                               f"has 'all' (RFC 7208 s. 6.1)", "remove one of them")
        elif redirect and not has_macro(redirect):
            self.lookups += 1
            await self.follow(redirect, chain, "redirect", where)

    async def mechanism(self, domain: str, term: str, m: Mechanism, chain: tuple[str, ...],
                        where: str) -> bool:
        """Check one mechanism, ``term`` as written; ``True`` when it is ``all``."""
        if m.is_all:
            return True
        if m.name in ("ip4", "ip6"):
            problem = ip_problem(m.name, m.rest)
            if problem:
                self.findings.fail("spf", f"{where}{term!r}: {problem}; receivers return permerror",
                                   "fix the address or network")
            return False
        if m.name not in DNS_MECHANISMS:
            self.findings.fail("spf", f"{where}unknown or malformed term {term!r}: receivers return "
                               f"permerror (RFC 7208 s. 4.6.1, 5)", "correct or remove it")
            return False
        target = domain_target(m)
        if target is None:
            self.findings.fail("spf", f"{where}malformed term {term!r}: receivers return permerror "
                               f"(RFC 7208 s. 4.6.1)", f"write {m.name}:DOMAIN")
            return False
        spec, cidr = target
        spec = domain if spec is None else spec
        problem = domain_spec_problem(spec) or cidr_problem(cidr)
        if problem:
            self.findings.fail("spf", f"{where}{term!r}: {problem}; receivers return permerror")
            return False
        self.lookups += 1
        if m.name == "ptr":
            self.findings.warn("spf", f"{where}'ptr' is slow and unreliable; RFC 7208 s. 5.5 says "
                               f"it SHOULD NOT be used", "list the addresses with ip4:/ip6: instead")
            return False
        if has_macro(spec):
            return False                # depends on the message: cannot be looked up here
        if m.name == "include":
            await self.follow(spec, chain, "include", where)
        elif m.name == "mx":
            await self.mx(spec, where)
        else:
            await self.addresses(spec, where)
        return False

    async def query(self, name: str, rdtype: str, where: str):
        answer = await self.resolver.query(name, rdtype, deadline=self.deadline)
        if answer.status == "temperror":
            self.findings.fail("spf", f"{where}no DNS answer for {name} {rdtype} ({answer.reason}): "
                               f"receivers get temperror")
        return answer

    async def addresses(self, name: str, where: str) -> None:
        a, aaaa = await asyncio.gather(self.query(name, "A", where), self.query(name, "AAAA", where))
        if a.void and aaaa.void:
            self.void += 1

    async def mx(self, name: str, where: str) -> None:
        answer = await self.query(name, "MX", where)
        if answer.void:
            self.void += 1
        elif answer.ok and len(answer.records) > SPF_MX_LIMIT:
            self.findings.fail("spf", f"{where}mx: {name} has {len(answer.records)} MX hosts, more "
                               f"than {SPF_MX_LIMIT}: receivers return permerror (RFC 7208 s. 4.6.4)",
                               "use ip4:/ip6: or a:HOST terms for the sending hosts")

    async def follow(self, target: str, chain: tuple[str, ...], how: str, where: str) -> None:
        target = target.rstrip(".").lower()
        if target in chain:
            self.findings.fail("spf", f"{how} loop: {' -> '.join(chain + (target,))}: receivers "
                               f"return permerror", f"remove the {how} that points back")
            return
        if self.fetched >= SPF_FOLLOW_LIMIT:
            return
        self.fetched += 1
        answer = await self.query(target, "TXT", where)
        if answer.status == "temperror":
            return
        records = spf_records(answer.records) if answer.ok else []
        if answer.void:
            self.void += 1
        if len(records) != 1:
            found = "no SPF record" if not records else f"{len(records)} SPF records"
            self.findings.fail("spf", f"{where}{how} target {target} has {found}: receivers return "
                               f"permerror (RFC 7208 s. {'5.2' if how == 'include' else '6.1'})",
                               f"fix {target}'s SPF record or remove the {how}")
            return
        await self.record(target, records[0], chain + (target,))


async def check_spf(domain: str, resolver, deadline: float, findings: Findings) -> None:
    answer = await resolver.query(domain, "TXT", deadline=deadline)    # cached by diagnose()
    records = spf_records(answer.records) if answer.ok else []
    if not records:
        findings.fail("spf", f"no SPF record at {domain}: receivers get spf=none and cannot tell "
                      f"your servers from forgers",
                      f'publish {domain} TXT "v=spf1 mx -all" (list your sending servers; '
                      f'"v=spf1 -all" if the domain sends no mail)')
        return
    if len(records) > 1:
        findings.fail("spf", f"{len(records)} SPF records at {domain}: receivers return permerror "
                      f"(RFC 7208 s. 4.5)", "merge them into one v=spf1 record")
        return
    walk = SpfWalk(resolver, deadline, findings)
    await walk.record(domain, records[0], (domain,))
    limits = f"{walk.lookups}/{SPF_LOOKUP_LIMIT} DNS lookups, {walk.void}/{SPF_VOID_LIMIT} void lookups"
    if walk.lookups > SPF_LOOKUP_LIMIT:
        findings.fail("spf", f"{limits}: more than {SPF_LOOKUP_LIMIT} DNS-querying terms, so receivers "
                      f"return permerror (RFC 7208 s. 4.6.4)",
                      "remove includes you no longer use, or replace some with ip4:/ip6: ranges")
    if walk.void > SPF_VOID_LIMIT:
        findings.fail("spf", f"{limits}: more than {SPF_VOID_LIMIT} lookups find nothing, so receivers "
                      f"return permerror (RFC 7208 s. 4.6.4)", "remove the terms naming missing hosts")
    qualifier = final_all(records[0])
    if qualifier == "+":
        findings.fail("spf", "the record ends in +all: every server on the internet may send as "
                      f"{domain}", "end it with -all (or ~all while testing)")
    elif qualifier in ("?", None) and "redirect=" not in records[0].lower():
        findings.warn("spf", "the record does not end in -all or ~all: mail from other servers gets "
                      "neutral, not fail", "end it with -all")
    if not any(f.level == FAIL for f in findings.items):
        findings.ok("spf", f"{records[0]!r}: {limits}")


# -- DMARC (RFC 9989) and report destinations (RFC 9990) -----------------------------------------
async def check_dmarc(domain: str, resolver, deadline: float, findings: Findings) -> None:
    from ..checks.dmarc import discover_policy
    from ..dmarcrecord import is_dmarc_record, parse_record
    from ..message import Message

    name = f"_dmarc.{domain}"
    own = await resolver.query(name, "TXT", deadline=deadline)
    for txt in own.records if own.ok else ():
        text = txt.decode("ascii", "replace")
        if re.match(r"\s*v\s*=\s*dmarc", text, re.IGNORECASE) and not is_dmarc_record(text):
            findings.fail("dmarc", f"{name} has {text[:60]!r}, which is not a DMARC record: "
                          f"{parse_record(text).reason}", 'start it with exactly "v=DMARC1;"')
    # The policy a receiver applies to mail From this domain: the filter's own discovery.
    message = Message.parse(b"From: <postmaster@" + domain.encode() + b">\r\n\r\n")
    discovery = await discover_policy(message, resolver, mode="rfc9989", deadline=deadline)
    policy = discovery.policies[0]
    fix_publish = (f'publish {name} TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}", '
                   f"read the reports, then move to p=quarantine and p=reject")
    if policy.outcome == "temperror":
        findings.fail("dmarc", f"{policy.reason}: receivers get dmarc=temperror")
        return
    if policy.outcome == "none":
        findings.fail("dmarc", f"{policy.reason}: receivers apply no policy and send no reports",
                      fix_publish)
        return
    record = policy.record
    where = f"_dmarc.{policy.policy_domain}"
    if policy.outcome == "permerror":
        findings.fail("dmarc", f"{policy.reason}: receivers ignore it (dmarc=permerror)",
                      "p=, sp= and np= take none, quarantine or reject")
        return
    for problem in record.problems:
        findings.warn("dmarc", f"{where}: {problem}")
    applied = record.policy_for(policy.relation)
    if "p" not in record.tags:
        findings.warn("dmarc", f"{where} has no p=: RFC 9989 reads p=none, but RFC 7489 receivers "
                      f"ignore the record", "add p=none (or quarantine/reject)")
    if applied == "none":
        findings.warn("dmarc", f"policy none for {domain}: receivers take no action on mail that "
                      f"fails DMARC", "when the reports show your mail passes, move to "
                                      "p=quarantine, then p=reject")
    if record.testing:
        findings.warn("dmarc", f"{where} has t=y: receivers apply one step less than "
                      f"p={applied} (RFC 9989 s. 4.7)", "remove t=y when testing is over")
    found = "" if policy.policy_domain == domain else \
        f" (no record at {name}: found by the DNS tree walk, {domain} as a {policy.relation})"
    findings.ok("dmarc", f"{where}: policy {applied} for {domain}{found}, adkim={record.adkim} "
                f"aspf={record.aspf}")
    await check_report_destinations(record, policy.policy_domain,
                                    policy.org_domain or policy.policy_domain, resolver, findings)


async def check_report_destinations(record, policy_domain: str, org_domain: str, resolver,
                                    findings: Findings) -> None:
    from ..reports.destinations import authorized, parse_uris

    for tag in ("rua", "ruf"):
        value = record.tags.get(tag)
        if value is None:
            if tag == "rua":
                findings.warn("reports", f"no rua=: you get no aggregate reports, so you cannot "
                              f"see who sends as {policy_domain}",
                              f"add rua=mailto:dmarc-reports@{policy_domain}")
            continue
        uris, problems = parse_uris(value)
        for problem in problems:
            findings.warn("reports", f"{tag}: {problem}", "use mailto: URIs")
        for uri in uris:        # one at a time: each gets its own DNS-failure flag
            result = await authorized([uri], policy_domain, org_domain, resolver, tag=tag)
            for skipped in result.skipped:
                findings.fail("reports", f"{tag} {skipped}: reporters will not send there "
                              f"(RFC 9990 s. 4)", None if result.retry else
                              f"the operator of {uri.host} must publish "
                              f'{policy_domain}._report._dmarc.{uri.host} TXT "v=DMARC1"')
            for accepted in result.uris:
                if await _accepts_mail(accepted.host, resolver, findings, tag):
                    findings.ok("reports", f"{tag} mailto:{accepted.address} may receive reports")


async def _accepts_mail(host: str, resolver, findings: Findings, tag: str) -> bool:
    """RFC 5321 s. 5.1: mail goes to the MX hosts, or to the address of the domain itself."""
    mx = await resolver.query(host, "MX")
    if mx.ok:
        return True
    a, aaaa = await asyncio.gather(resolver.query(host, "A"), resolver.query(host, "AAAA"))
    if a.ok or aaaa.ok:
        return True
    if "temperror" in (mx.status, a.status, aaaa.status):
        findings.fail("reports", f"{tag}: no DNS answer about {host}'s mail servers")
    else:
        findings.fail("reports", f"{tag}: {host} has no MX and no address: reports to it bounce",
                      f"publish an MX record for {host} or use another address")
    return False


# -- DKIM (RFC 6376, 8301, 8463) -----------------------------------------------------------------
async def check_dkim(domain: str, selectors: list[Selector], resolver, deadline: float,
                     findings: Findings) -> None:
    if not selectors:
        findings.warn("dkim", f"no DKIM selector to check for {domain} (selectors cannot be "
                      f"listed from the DNS)", "give --selector NAME, or configure "
                                                "[[signing.keys]] for the domain")
        return
    await asyncio.gather(*(_check_selector(domain, s, resolver, deadline, findings)
                           for s in selectors))


async def _check_selector(domain: str, selector: Selector, resolver, deadline: float,
                          findings: Findings) -> None:
    from ..dkimcore import key_name
    from ..signing.keys import SigningConfigError, load_key
    from ..signing.published import PublishedKey, compare

    name = key_name(selector.name, domain)
    answer = await resolver.query(name, "TXT", deadline=deadline)
    if selector.key is not None:
        try:
            private = load_key(selector.key.key_file, selector.key.algorithm)
        except SigningConfigError as exc:
            findings.warn("dkim", f"{name}: cannot compare with the configured key: {exc}")
        else:           # the same comparison as `authfilter keys check`
            check = compare(PublishedKey("dkim", domain, selector.name, private, selector.key.active),
                            answer.status, answer.records, answer.reason)
            if check.problem:
                findings.fail("dkim", f"{check.detail}: our signatures with s={selector.name} "
                              f"will not verify", f'publish {name} TXT "{private.dns_record()}"'
                              if check.status != "temperror" else None)
            else:
                findings.ok("dkim", check.detail)
            return
    _check_published_key(name, selector.name, answer, findings)


def _check_published_key(name: str, selector: str, answer, findings: Findings) -> None:
    """A key record with no private key to compare: is it there and usable?"""
    from ..checks.dkim import KeyUnavailable, usable_key
    from ..signing.keys import RSA_MAX_BITS, RSA_MIN_BITS

    try:
        key = usable_key(answer, name)
    except KeyUnavailable as exc:
        findings.fail("dkim", f"{exc.reason}: signatures with s={selector} get dkim={exc.result}",
                      None if exc.result == "temperror" else f"publish the public key at {name} TXT")
        return
    before = len(findings.items)
    if key.key_type == "rsa" and key.bits < RSA_MIN_BITS:
        findings.fail("dkim", f"{name}: RSA key of {key.bits} bits; receivers reject keys under "
                      f"{RSA_MIN_BITS} bits (RFC 8301 s. 3.2)", "generate a 2048-bit key")
    elif key.key_type == "rsa" and key.bits < 2048:
        findings.warn("dkim", f"{name}: RSA key of {key.bits} bits; RFC 8301 s. 3.2 asks signers "
                      f"for at least 2048", "rotate to a 2048-bit key")
    elif key.key_type == "rsa" and key.bits > RSA_MAX_BITS:
        findings.warn("dkim", f"{name}: RSA key of {key.bits} bits; verifiers need only handle "
                      f"up to {RSA_MAX_BITS} (RFC 8301 s. 3.2)", "use 2048 bits")
    if key.testing:
        findings.warn("dkim", f"{name}: t=y (testing): receivers may treat signatures as unsigned",
                      "remove t=y")
    if len(findings.items) == before:
        findings.ok("dkim", f"{name}: {key.key_type} key of {key.bits} bits")
