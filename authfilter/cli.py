"""Command-line entry point: ``authfilter <command> ...``.

Each command lives in ``authfilter/commands/<name>.py`` with ``register(subparsers)``, which
adds its sub-parser and sets ``func=run``; ``run(args) -> int`` is the exit code.  Command
modules import their heavy dependencies inside ``run`` so that ``authfilter --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import select
import sys

from . import __version__

COMMAND_MODULES = [
    "check",
    "config_cmd",
    "doctor",
    "report",
    "sign",
    "keygen",
    "keys",
    "serve",
    "install_service",
]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 2 with one clear line and no traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="authfilter",
                     description="SPF, DKIM, ARC and DMARC for Postfix.")
    parser.add_argument("--version", action="version", version=f"authfilter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"authfilter.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError as exc:
        if _stdout_closed():             # `authfilter report show | head`: the reader is done
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error
            return 0
        sys.stderr.write(f"authfilter: error: {exc}\n")   # e.g. a helper process that died
        return 1


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False
