"""``authfilter sign``: DKIM-sign a message with the configured signing table and print it."""
from __future__ import annotations

import argparse
import sys

from .common import add_config_argument, load_config_or_exit, read_message

EXIT_NOT_SIGNED = 1
EXIT_USAGE = 2


def register(sub) -> None:
    p = sub.add_parser("sign", help="DKIM-sign a message and print it",
                       description="Sign a message as the submission listener would, with every "
                                   "active key the signing table has for its From domain, and "
                                   "print it.  Exit 1 (message printed unchanged, reason on "
                                   "stderr) when it is not signed.")
    add_config_argument(p)
    p.add_argument("file", nargs="?", default="-", help="message file, or - for stdin (default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..signing import Signer, SigningConfigError

    config = load_config_or_exit(args.config)
    try:
        signer = Signer.from_config(config)
    except SigningConfigError as exc:
        sys.stderr.write(f"authfilter sign: {exc}\n")
        return EXIT_USAGE
    try:
        raw = read_message(args.file)
    except OSError as exc:
        sys.stderr.write(f"authfilter sign: cannot read {args.file}: {exc.strerror or exc}\n")
        return EXIT_USAGE
    except ValueError as exc:
        sys.stderr.write(f"authfilter sign: {exc}\n")
        return EXIT_USAGE
    outcome = signer.sign_message(raw)
    out = outcome.message
    if b"\r\n" not in raw:                      # give LF-only input back as LF-only
        out = out.replace(b"\r\n", b"\n")
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    if outcome.skipped:
        sys.stderr.write(f"authfilter sign: not signed: {outcome.skipped}\n")
        return EXIT_NOT_SIGNED
    for key in outcome.keys:
        sys.stderr.write(f"authfilter sign: signed {key.describe()}\n")
    return 0
