"""Turn a :class:`~authfilter.results.Verdict` into an :class:`Action`: the one place that decides.

A policy is a small TOML file (``policies/<name>.toml``) saying what each kind of failure leads
to: ``accept`` (tag only), ``quarantine`` (accept with a header a delivery agent, or Postfix's
``header_checks`` HOLD, can act on), ``tempfail`` (4xx: the sender keeps the mail and retries) or
``reject`` (5xx with an RFC 7372 enhanced status code and a reason the sender can act on).
The operator's local exceptions come from the config's ``[policy]`` section: trusted networks,
allow-lists, ARC sealers trusted to vouch for forwarded mail, and dry-run.

Order of decision (first step that applies wins, later steps only soften):

0. the early defences (:meth:`Policy.screen`, asked at RCPT and again at the end of the
   message): local deny lists (``policy.deny_ips``, ``deny_domains``: 554, before any DNS
   work), then DNS blocklists by each list's action and the summed weights, then the
   ``[iprev]`` rules; an allow-listing (``allow_ips``, a DNSWL with action allow) exempts the
   client from the blocklists and iprev, never from the deny lists.  The most severe of this
   and of the authentication decision below is applied;
1. trusted networks: accept, nothing verified (or DKIM only, never acted on);
2. DMARC by its result and the disposition the domain asks for (RFC 9989 s. 4.7, ``t=y``
   already folded into the disposition by the engine); a DMARC ``temperror`` (a DNS failure,
   or an aligned identifier that could not be checked) follows ``temperror_reject`` only when
   the record that was found asks for ``p=reject``: RFC 9989 s. 5.3.6, the domain's policy
   "cannot be applied", so no bundled policy refuses a DMARC temperror with 550 (the 451 of
   ``tempfail`` lets the sender retry);
3. SPF, only when DMARC did not pass (SPF alone breaks on forwarding, so by default it never
   rejects: RFC 7208 s. 8.4 leaves it to local policy);
4. softening of authentication failures: a validated ARC chain (cv=pass) whose newest sealer is
   trusted (RFC 8617 s. 7.2 leaves trust to the receiver) -> ``trusted_forwarder``; mail from a
   mailing list (List-Id / List-Post, RFC 2369 / 2919) -> ``mailing_list``;
5. allow-lists (client IP, From or MAIL FROM domain) -> accept, override ``local_policy``;
6. dry-run: accept, and remember what would have happened.

``Action.override`` uses the RFC 9990 PolicyOverrideType words so the DMARC report recorder can
report why the applied disposition differs from the one the domain asked for.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from . import config as config_mod
from .config import Config, DnsblConfig, PolicyConfig, setting
from .message import HeaderField
from .results import IPAddress, SessionFacts, SmtpReply, Verdict

ACCEPT, QUARANTINE, TEMPFAIL, REJECT = "accept", "quarantine", "tempfail", "reject"
SEVERITY = {ACCEPT: 0, QUARANTINE: 1, TEMPFAIL: 2, REJECT: 3}
ActionWord = Literal["accept", "quarantine", "tempfail", "reject"]

BUNDLED_POLICIES = Path(__file__).resolve().parent.parent / "policies"     # a checkout
INSTALLED_POLICIES = Path(sys.prefix) / "share" / "authfilter" / "policies"  # pip install .
SYSTEM_POLICIES = Path("/etc/authfilter/policies")
_POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class PolicyError(ValueError):
    """A policy file that cannot be found or read; ``problems`` names every bad key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# -- the policy file's schema ----------------------------------------------------------------
@dataclass
class DmarcRules:
    reject: ActionWord = setting(REJECT, "DMARC fail where the domain asks for reject")
    quarantine: ActionWord = setting(QUARANTINE, "DMARC fail where the domain asks for quarantine")
    none: ActionWord = setting(ACCEPT, "DMARC fail where the domain asks for nothing (p=none)")
    temperror_reject: ActionWord = setting(TEMPFAIL, "DMARC temperror where the record found "
                                                     "asks for reject")
    temperror: ActionWord = setting(ACCEPT, "any other DMARC temperror (no record could be read, "
                                            "or it asks for less than reject)")
    permerror: ActionWord = setting(ACCEPT, "DMARC permerror from a broken DMARC record")
    invalid_from: ActionWord = setting(REJECT, "no single usable author domain: several From "
                                               "fields, no From, an unparsable From (the classic "
                                               "DMARC bypass; RFC 5322 s. 3.6 requires one From)")


@dataclass
class SpfRules:
    fail: ActionWord = setting(ACCEPT, "SPF fail when DMARC did not pass")
    softfail: ActionWord = setting(ACCEPT, "SPF softfail when DMARC did not pass")
    temperror: ActionWord = setting(ACCEPT, "SPF temperror when DMARC did not pass")
    permerror: ActionWord = setting(ACCEPT, "SPF permerror when DMARC did not pass")


@dataclass
class MailingListRules:
    reject: ActionWord = setting(QUARANTINE, "instead of reject, for mail with List-Id/List-Post")
    quarantine: ActionWord = setting(QUARANTINE, "instead of quarantine, for mailing-list mail")


@dataclass
class ArcRules:
    trusted_sealer_pass: ActionWord = setting(
        ACCEPT, "what an authentication failure becomes when the ARC chain validates and its "
                "newest sealer is in policy.arc_trusted_sealers")


@dataclass
class IprevRules:
    fail: ActionWord = setting(ACCEPT, "iprev fail: the client's reverse DNS names do not map back "
                                       "to it (decided at RCPT)")
    permerror: ActionWord = setting(ACCEPT, "iprev permerror: no reverse DNS (PTR) for the client")
    temperror: ActionWord = setting(ACCEPT, "iprev temperror: the reverse DNS could not be read now")


@dataclass
class QuarantineRules:
    header: str = setting("X-Authfilter-Quarantine", "header field added to quarantined mail "
                                                     "(forged copies are removed first)")


@dataclass
class PolicyRules:
    description: str = setting("", "what this policy is for")
    dmarc: DmarcRules = config_mod.section(DmarcRules, "DMARC outcomes")
    spf: SpfRules = config_mod.section(SpfRules, "SPF outcomes (only when DMARC did not pass)")
    mailing_list: MailingListRules = config_mod.section(MailingListRules, "mailing-list mail")
    arc: ArcRules = config_mod.section(ArcRules, "forwarders trusted through ARC")
    iprev: IprevRules = config_mod.section(IprevRules, "the client's reverse DNS (iprev)")
    quarantine: QuarantineRules = config_mod.section(QuarantineRules, "how quarantine is marked")


# -- actions -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Action:
    """What to do with one message.

    ``reply`` is the SMTP reply for reject and tempfail; ``add_fields`` are header fields to
    add below our Authentication-Results (the quarantine mark); ``override`` is the
    RFC 9990 reason when local policy departed from the domain's DMARC disposition;
    ``would_be`` is the action dry-run mode did not take.
    """

    kind: ActionWord
    reason: str
    reply: SmtpReply | None = None
    add_fields: tuple[HeaderField, ...] = ()
    override: str | None = None
    would_be: str | None = None
    defence: str | None = None      # the early defence that decided: deny, dnsbl, iprev

    @property
    def disposition(self) -> str:
        """The DMARC disposition actually applied (RFC 9990 ``disposition``)."""
        return {REJECT: "reject", QUARANTINE: "quarantine"}.get(self.kind, "none")

    def _replace_fields(self, more: tuple[HeaderField, ...]) -> "Action":
        """This action, with the header fields of another it was combined with (a DNSBL tag
        beside a DMARC quarantine mark); a refusal adds nothing."""
        if self.kind in (REJECT, TEMPFAIL) or not more:
            return self
        names = {name.lower() for name, _ in self.add_fields}
        extra = tuple(f for f in more if f[0].lower() not in names)
        return dataclasses.replace(self, add_fields=self.add_fields + extra)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One rule's wish before overrides: the action and the reply ingredients."""

    kind: str
    cause: str                       # key of _REPLIES
    domain: str
    reason: str
    authentication_failure: bool     # fail/softfail (softened by ARC and lists), not an error


# (enhanced code subject.detail, text); RFC 7372 s. 3 codes X.7.23 (SPF failed),
# X.7.24 (SPF error), X.7.26 (multiple checks failed: DMARC needs both SPF and DKIM to fail);
# RFC 3463 X.4.3 (directory server failure: DNS) and X.7.1 (not authorized).
_REPLIES = {
    "dmarc_fail": ("7.26", "Unauthenticated email from {domain} is not accepted due to the "
                           "domain's DMARC policy: no aligned SPF pass and no valid aligned DKIM "
                           "signature; the sender's postmaster can fix SPF or DKIM for {domain}"),
    "dmarc_temperror": ("4.3", "Temporary DNS failure while checking DMARC for {domain}, "
                               "try again later"),
    "dmarc_permerror": ("7.1", "Message cannot be checked with DMARC ({reason})"),
    "invalid_from": ("7.1", "Message must have exactly one From address with a domain "
                            "(RFC 5322 s. 3.6): {reason}"),
    "spf_fail": ("7.23", "SPF check failed: {domain} does not permit this server to send its mail"),
    "spf_softfail": ("7.23", "SPF check failed (softfail): {domain} does not permit this server "
                             "to send its mail"),
    "spf_temperror": ("7.24", "Temporary DNS error checking SPF for {domain}, try again later"),
    "spf_permerror": ("7.24", "SPF record of {domain} is invalid (permerror)"),
    # RFC 7372 s. 3 X.7.25: reverse DNS validation failed
    "iprev": ("7.25", "Reverse DNS validation failed for {domain} ({reason})"),
}


def smtp_reply(kind: str, cause: str, domain: str, reason: str) -> SmtpReply:
    """``550 5.7.26 ...`` for reject, ``451 4.x.y ...`` for tempfail (ASCII, one line)."""
    enhanced, template = _REPLIES[cause]
    text = template.format(domain=domain or "the sender's domain", reason=_one_line(reason, 120))
    code, cls = (550, 5) if kind == REJECT else (451, 4)
    return SmtpReply(code, f"{cls}.{enhanced} {text}".encode("ascii", "replace").decode("ascii"))


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split()).encode("ascii", "replace").decode("ascii")
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- the policy ----------------------------------------------------------------------------
class Policy:
    def __init__(self, rules: PolicyRules, settings: PolicyConfig, name: str = "default", *,
                 dnsbl: DnsblConfig | None = None, deny_file: Iterable[str] = ()) -> None:
        self.rules = rules
        self.settings = settings
        self.name = name
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in settings.trusted_networks]
        self._allow_ips = [ipaddress.ip_network(n, strict=False) for n in settings.allow_ips]
        self._allow_domains = [d.lower().rstrip(".") for d in settings.allow_domains]
        self._sealers = {d.lower().rstrip(".") for d in settings.arc_trusted_sealers}
        self._deny_ips = [ipaddress.ip_network(n, strict=False)
                          for n in [*settings.deny_ips, *deny_file]]
        self._deny_domains = [d.lower().rstrip(".") for d in settings.deny_domains]
        self.dnsbl = dnsbl or DnsblConfig()
        self._dnsbl_lists = bool(self.dnsbl.lists)
        self.quarantine_header = rules.quarantine.header

    @classmethod
    def from_config(cls, config: Config) -> "Policy":
        settings = config.policy
        path = find_policy_file(settings.name, settings.directory, config.source)
        deny_file = (read_network_file(_relative(settings.deny_ips_file, config.source))
                     if settings.deny_ips_file else ())
        return cls(load_rules(path), settings, settings.name, dnsbl=config.dnsbl,
                   deny_file=deny_file)

    # -- local exceptions --------------------------------------------------------------------
    def is_trusted(self, ip: IPAddress | None) -> bool:
        return ip is not None and _in_networks(ip, self._trusted)

    def denies(self, ip: IPAddress | None) -> bool:
        """Whether ``policy.deny_ips`` refuses this client (its DNS checks are not started)."""
        return ip is not None and _in_networks(ip, self._deny_ips)

    @property
    def screens(self) -> bool:
        """Whether :meth:`screen` can refuse anything at RCPT with these settings (a milter
        then asks the MTA to wait for our RCPT replies)."""
        iprev = self.rules.iprev
        return bool(self._deny_ips or self._deny_domains or self._dnsbl_lists
                    or {iprev.fail, iprev.permerror, iprev.temperror} - {ACCEPT})

    # -- the early defences ----------------------------------------------------------------
    def screen(self, facts: SessionFacts, results: Mapping[str, Any],
               from_domains: Iterable[str] = ()) -> Action | None:
        """The early decision: deny lists, DNS blocklists, iprev (see the module docstring).
        ``results`` holds the client checks' results (and at the end of the message
        ``dnsbl_domain``'s); ``from_domains``, at the end of the message, the From domains.
        At RCPT only a reject or tempfail is acted on; quarantine and tag wait for the end of
        the message, which asks again.  None: nothing to do."""
        if facts.trusted:
            return None
        found = self._denied(facts, from_domains) or self._listed(facts, results)
        if found is None:
            return None
        defence, kind, reason, reply, fields = found
        if self.settings.dry_run and kind != ACCEPT:
            return Action(ACCEPT, f"{reason}; dry run", override="local_policy", would_be=kind,
                          defence=defence)
        if kind == QUARANTINE:
            fields = fields + ((self.quarantine_header, _one_line(reason, 400)),)
        return Action(kind, reason, reply if kind in (REJECT, TEMPFAIL) else None, fields,
                      override="local_policy" if kind != ACCEPT else None, defence=defence)

    def _denied(self, facts: SessionFacts, from_domains: Iterable[str]) -> _Defence | None:
        ip = facts.client_ip
        if ip is not None and _in_networks(ip, self._deny_ips):
            return ("deny", REJECT, f"client {ip} is in policy.deny_ips",
                    SmtpReply(554, f"5.7.1 Client host [{ip}] blocked by local policy"), ())
        sender = facts.mail_from.rpartition("@")[2].lower().rstrip(".") if facts.mail_from else ""
        for what, domain in [("sender", sender)] + [("From", d) for d in from_domains]:
            if domain and _domain_listed(domain, self._deny_domains):
                return ("deny", REJECT, f"{what} domain {domain} is in policy.deny_domains",
                        SmtpReply(554, f"5.7.1 {what} domain {_one_line(domain, 80)} blocked by "
                                       f"local policy"), ())
        return None

    def _listed(self, facts: SessionFacts, results: Mapping[str, Any]) -> _Defence | None:
        """The blocklists' and iprev's wish, most severe first; None: nothing to do."""
        if facts.client_ip is not None and _in_networks(facts.client_ip, self._allow_ips):
            return None
        listings = [listing for name in ("dnsbl", "dnsbl_domain")
                    if (result := results.get(name)) is not None for listing in result.listings]
        if any(listing.action == "allow" for listing in listings):
            return None             # a DNSWL vouches for the client
        wishes: list[_Defence] = []
        for listing in listings:
            if listing.action in _LISTING_ACTIONS:
                wishes.append(self._listing_defence(facts, listing.action, [listing]))
        dnsbl = self.dnsbl
        if dnsbl.threshold > 0 and listings:
            score = sum(listing.weight for listing in listings)
            if score >= dnsbl.threshold:
                wishes.append(self._listing_defence(facts, dnsbl.threshold_action, listings,
                                                    score=score))
        iprev = results.get("iprev")
        if iprev is not None and iprev.result in ("fail", "permerror", "temperror"):
            kind = getattr(self.rules.iprev, iprev.result)
            if kind != ACCEPT:
                reason = f"iprev={iprev.result}" + (f": {iprev.reason}" if iprev.reason else "")
                wishes.append(("iprev", kind, reason,
                               smtp_reply(kind, "iprev", f"[{iprev.ip}]", reason), ()))
        if not wishes:
            return None
        worst = max(wishes, key=lambda w: SEVERITY[w[1]])
        tags = tuple(f for w in wishes for f in w[4]) if worst[1] in (ACCEPT, QUARANTINE) else ()
        return worst[:4] + (tags,)

    def _listing_defence(self, facts: SessionFacts, action: str, listings: list,
                         score: float | None = None) -> _Defence:
        names = ", ".join(dict.fromkeys(listing.list for listing in listings))
        first = listings[0]
        who = (f"client [{first.queried}]" if first.identity == "ip"
               else f"{first.identity.replace('_', ' ')} domain {_one_line(first.queried, 80)}")
        reason = (f"dnsbl score {score:g} >= {self.dnsbl.threshold:g} ({names})" if score is not None
                  else f"{who} listed by {names} ({','.join(first.answers)})")
        if action == "tag":
            return "dnsbl", ACCEPT, reason, None, ((self.dnsbl.tag_header, _one_line(reason, 400)),)
        if action == TEMPFAIL:
            reply = SmtpReply(451, f"4.7.1 Service unavailable; {who} listed by {names}, try "
                                   f"again later")
        else:
            reply = SmtpReply(554, f"5.7.1 Service unavailable; {who} blocked using {names}")
        return "dnsbl", action, reason, reply, ()

    def _allow_listed(self, facts: SessionFacts, verdict: Verdict) -> str | None:
        if facts.client_ip is not None and _in_networks(facts.client_ip, self._allow_ips):
            return f"client {facts.client_ip} is allow-listed"
        sender_domain = facts.mail_from.rpartition("@")[2] if facts.mail_from else None
        for domain in (verdict.dmarc.from_domain, sender_domain):
            if domain and _domain_listed(domain.lower().rstrip("."), self._allow_domains):
                return f"domain {domain} is allow-listed"
        return None

    def _trusted_forwarder(self, verdict: Verdict) -> str | None:
        arc = verdict.arc
        if arc.result == "pass" and arc.sealers and arc.sealers[-1].lower() in self._sealers:
            return arc.sealers[-1]
        return None

    # -- the decision ------------------------------------------------------------------------
    def decide(self, facts: SessionFacts, verdict: Verdict, *, mailing_list: bool = False) -> Action:
        if facts.trusted:
            return Action(ACCEPT, "trusted network")
        authentication = self._authentication(facts, verdict, mailing_list)
        from_domain = verdict.dmarc.from_domain
        early = self.screen(facts, _ScreenResults(verdict), (from_domain,) if from_domain else ())
        if early is None:
            return authentication
        if SEVERITY[early.kind] > SEVERITY[authentication.kind] or (
                early.would_be and not authentication.would_be and authentication.kind == ACCEPT):
            return early._replace_fields(authentication.add_fields)
        return authentication._replace_fields(early.add_fields)

    def _authentication(self, facts: SessionFacts, verdict: Verdict, mailing_list: bool) -> Action:
        """Steps 2 to 6 of the module docstring."""
        outcome = self._dmarc_outcome(verdict)
        if verdict.dmarc.result != "pass":
            spf = self._spf_outcome(verdict)
            if spf is not None and SEVERITY[spf.kind] > SEVERITY[outcome.kind]:
                outcome = spf
        if outcome.kind == ACCEPT:
            return Action(ACCEPT, outcome.reason)
        kind, override, reason = outcome.kind, None, outcome.reason
        if outcome.authentication_failure:
            sealer = self._trusted_forwarder(verdict)
            softer = getattr(self.rules.mailing_list, kind, None) if mailing_list else None
            if sealer is not None:
                kind, override = self.rules.arc.trusted_sealer_pass, "trusted_forwarder"
                reason += f"; ARC chain sealed by trusted {sealer}"
            elif softer is not None:
                kind, override = softer, "mailing_list"
                reason += "; mailing list"
        allowed = self._allow_listed(facts, verdict) if kind != ACCEPT else None
        if allowed is not None:
            kind, override, reason = ACCEPT, "local_policy", f"{reason}; {allowed}"
        if self.settings.dry_run and kind != ACCEPT:
            return Action(ACCEPT, f"{reason}; dry run", override="local_policy", would_be=kind)
        return self._action(kind, outcome, reason, override)

    def _action(self, kind: str, outcome: _Outcome, reason: str, override: str | None) -> Action:
        if kind == ACCEPT:
            return Action(ACCEPT, reason, override=override)
        if kind == QUARANTINE:
            return Action(QUARANTINE, reason,
                          add_fields=((self.quarantine_header, _one_line(reason, 400)),),
                          override=override)
        return Action(kind, reason, smtp_reply(kind, outcome.cause, outcome.domain, reason),
                      override=override)

    def _dmarc_outcome(self, verdict: Verdict) -> _Outcome:
        dm, rules = verdict.dmarc, self.rules.dmarc
        domain = dm.from_domain or ""
        if dm.result == "fail":
            kind = getattr(rules, dm.disposition, rules.reject)
            reason = f"dmarc=fail policy={dm.policy} disposition={dm.disposition} from={domain}"
            return _Outcome(kind, "dmarc_fail", domain, reason, True)
        if dm.result == "temperror":
            # t=y (RFC 9989 s. 4.7): the domain is testing its policy and asks for none applied
            asks_reject = _published_policy(verdict) == "reject" and not dm.testing
            kind = rules.temperror_reject if asks_reject else rules.temperror
            reason = f"dmarc=temperror from={domain}" + (" (p=reject)" if asks_reject else "")
            return _Outcome(kind, "dmarc_temperror", domain, f"{reason}: {dm.reason}", False)
        if dm.result == "permerror" and dm.author_error:
            return _Outcome(rules.invalid_from, "invalid_from", domain,
                            f"dmarc=permerror: {dm.reason}", False)
        if dm.result == "permerror":
            return _Outcome(rules.permerror, "dmarc_permerror", domain,
                            f"dmarc=permerror: {dm.reason}", False)
        return _Outcome(ACCEPT, "", domain, f"dmarc={dm.result}", False)

    def _spf_outcome(self, verdict: Verdict) -> _Outcome | None:
        spf = verdict.spf
        kind = getattr(self.rules.spf, spf.result, None) if spf.result in (
            "fail", "softfail", "temperror", "permerror") else None
        if kind is None:
            return None
        reason = f"spf={spf.result} domain={spf.domain}"
        return _Outcome(kind, f"spf_{spf.result}", spf.domain or "", reason,
                        spf.result in ("fail", "softfail"))

# (defence, kind, reason, reply, header fields)
_Defence = tuple[str, str, str, "SmtpReply | None", tuple[HeaderField, ...]]
_LISTING_ACTIONS = frozenset({REJECT, TEMPFAIL, QUARANTINE, "tag"})


class _ScreenResults(Mapping):
    """A verdict's results by check name, as :meth:`Policy.screen` reads them."""

    def __init__(self, verdict: Verdict) -> None:
        self._verdict = verdict

    def __getitem__(self, name: str) -> Any:
        result = self._verdict.result(name)
        if result is None:
            raise KeyError(name)
        return result

    def __iter__(self):
        return (check.name for check, _ in self._verdict.reported())

    def __len__(self) -> int:
        return sum(1 for _ in self)


def read_network_file(path: Path) -> list[str]:
    """``policy.deny_ips_file``: one network per line, ``#`` comments; a bad line is a
    :class:`PolicyError` naming it (so a reload with a broken file keeps the old config)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError) as exc:
        raise PolicyError([f"policy.deny_ips_file: {path}: {getattr(exc, 'strerror', None) or exc}"]) from None
    networks, problems = [], []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            problems.append(f"policy.deny_ips_file: {path}:{number}: {text!r} is not an IP network")
            continue
        networks.append(text)
    if problems:
        raise PolicyError(problems[:10])
    return networks


def _relative(name: str, config_source: str | None) -> Path:
    path = Path(name)
    if not path.is_absolute() and config_source:
        path = Path(config_source).parent / path
    return path


def _published_policy(verdict: Verdict) -> str | None:
    """The policy the domain's record asks for, when a record was found despite the temperror.

    The engine fills ``policy`` once it knows the relation of the From domain to the record; on
    a temperror it may only have the record's tags, so ``sp=`` (subdomains) falls back to ``p=``.
    """
    dm = verdict.dmarc
    if dm.policy != "none":
        return dm.policy
    tags = dm.record or {}
    if dm.policy_domain and dm.from_domain and dm.policy_domain != dm.from_domain:
        return tags.get("sp") or tags.get("p")
    return tags.get("p")


def _in_networks(ip: IPAddress, networks: list) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)


def _domain_listed(domain: str, listed: list[str]) -> bool:
    for entry in listed:
        if entry.startswith("."):
            if domain == entry[1:] or domain.endswith(entry):
                return True
        elif domain == entry:
            return True
    return False


# -- loading -------------------------------------------------------------------------------
def find_policy_file(name: str, directory: str = "", config_source: str | None = None) -> Path:
    """``name`` is a policy name (looked up as NAME.toml) or a path to a ``.toml`` file; a
    relative path is taken relative to the config file."""
    if name.endswith(".toml") or "/" in name:
        path = Path(name)
        if not path.is_absolute() and config_source:
            path = Path(config_source).parent / path
        if not path.is_file():
            raise PolicyError([f"policy.name: {path}: no such file"])
        return path
    if not _POLICY_NAME.match(name):
        raise PolicyError([f"policy.name: {name!r} is not a policy name (letters, digits, - and _)"])
    places = [Path(directory)] if directory else []
    places += [SYSTEM_POLICIES, BUNDLED_POLICIES, INSTALLED_POLICIES]
    for place in places:
        candidate = place / f"{name}.toml"
        if candidate.is_file():
            return candidate
    raise PolicyError([f"policy.name: no policy {name!r} in " + ", ".join(str(p) for p in places)])


def load_rules(path: Path) -> PolicyRules:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise PolicyError([f"{path}: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"{path}: not valid TOML: {exc}"]) from None
    problems: list[str] = []
    rules = config_mod.build_section(PolicyRules, data, problems)
    if problems:
        raise PolicyError([f"{path}: {p}" for p in problems])
    if not re.match(r"^[!-9;-~]+$", rules.quarantine.header):
        raise PolicyError([f"{path}: quarantine.header: {rules.quarantine.header!r} is not a "
                           f"header field name"])
    return rules

