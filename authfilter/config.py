"""One TOML file -> typed, validated settings with defaults that work.

Every setting is a dataclass field with a default and a ``doc`` (the config reference in the
README is generated from them, see ``authfilter config reference``).  Loading checks every key:
an unknown key or a bad value raises :class:`ConfigError` naming the key path, e.g.
``dns.timeout: expected a number, got "fast"``.

Each section's keys live next to nothing else; a feature adds its own section class here.
"""
from __future__ import annotations

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
        factory = (lambda d=default: json.loads(json.dumps(d))) if not dataclasses.is_dataclass(default) \
            else type(default)
        return field(default_factory=factory, metadata=meta)
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


@dataclass
class SpfConfig:
    helo_check: bool = setting(False, "also check the HELO identity and report it as a separate "
                                      "spf result with smtp.helo")
    timeout: float = setting(15.0, "seconds the SPF check may take in total (RFC 7208 s. 4.6.4 "
                                   "suggests at least 20 s; the message deadline caps it)",
                             minimum=1, maximum=60)


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
class Config:
    general: GeneralConfig = section(GeneralConfig, "identity and overall deadline")
    dns: DnsConfig = section(DnsConfig, "the resolver every check uses")
    spf: SpfConfig = section(SpfConfig, "SPF (RFC 7208)")
    dkim: DkimConfig = section(DkimConfig, "DKIM verification (RFC 6376, 8301, 8463)")
    arc: ArcConfig = section(ArcConfig, "ARC validation (RFC 8617)")
    dmarc: DmarcConfig = section(DmarcConfig, "DMARC (RFC 9989)")
    logging: LoggingConfig = section(LoggingConfig, "logging")
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
        shown = json.dumps(to_dict(default) if dataclasses.is_dataclass(default) else default)
        rows.append((key, _type_name(tp), shown, f.metadata.get("doc", "")))
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
