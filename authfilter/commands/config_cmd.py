"""``authfilter config check|show|reference``."""
from __future__ import annotations

import argparse
import json
import sys

from .common import load_config_or_exit


def register(sub) -> None:
    p = sub.add_parser("config", help="check or show the configuration")
    cmds = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = cmds.add_parser("check", help="validate a config file and the policy, keys and "
                                      "certificates it names; exit 0 when all is well")
    c.add_argument("file", nargs="?", help="config file (default: embedded defaults)")
    c.set_defaults(func=run_check)
    s = cmds.add_parser("show", help="print the effective config with defaults filled in")
    s.add_argument("file", nargs="?", help="config file (default: embedded defaults)")
    s.add_argument("--config", "-c", dest="file_opt", metavar="FILE", help=argparse.SUPPRESS)
    s.add_argument("--json", action="store_true", help="JSON instead of TOML")
    s.add_argument("--changed", action="store_true",
                   help="only what differs from the embedded defaults (as postconf -n)")
    s.set_defaults(func=run_show)
    r = cmds.add_parser("reference", help="print the config reference as a Markdown table")
    r.set_defaults(func=run_reference)


def run_check(args: argparse.Namespace) -> int:
    from ..startup import load_checked
    load_config_or_exit(args.file, load_checked)
    sys.stdout.write(f"{args.file or '(embedded defaults)'}: ok\n")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from ..config import Config, to_dict, to_toml
    data = to_dict(load_config_or_exit(args.file or args.file_opt))
    if args.changed:
        data = changed(data, to_dict(Config()))
    sys.stdout.write(json.dumps(data, indent=2) + "\n" if args.json else to_toml(data))
    return 0


def changed(data: dict, defaults: dict) -> dict:
    """The keys of ``data`` whose values differ from ``defaults``, sections kept where they hold
    one; an array of tables (listeners, signing keys) is one value, shown whole."""
    out = {}
    for key, value in data.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            inner = changed(value, default)
            if inner:
                out[key] = inner
        elif value != default:
            out[key] = value
    return out


def run_reference(args: argparse.Namespace) -> int:
    from ..config import reference_markdown
    sys.stdout.write(reference_markdown())
    return 0
