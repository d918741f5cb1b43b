"""Helpers shared by the command modules: loading the config with one clear error."""
from __future__ import annotations

import sys
from typing import Callable

from .. import config as config_mod
from ..config import Config, ConfigError


def add_config_argument(parser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="TOML config file (default: embedded defaults)")


def load_config_or_exit(path: str | None, loader: Callable[[str | None], Config] = config_mod.load
                        ) -> Config:
    """The config, or exit 2 with every problem listed by key path (``loader`` may check more,
    raising ConfigError or PolicyError, both of which carry ``problems``)."""
    from ..policy import PolicyError
    try:
        return loader(path)
    except (ConfigError, PolicyError) as exc:
        sys.stderr.write("authfilter: invalid configuration:\n")
        for problem in exc.problems:
            sys.stderr.write(f"  {problem}\n")
        raise SystemExit(2) from None


MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def read_message(path: str) -> bytes:
    """A message file, or standard input for ``-``; OSError or ValueError with a clear text."""
    if path == "-":
        raw = sys.stdin.buffer.read(MAX_MESSAGE_BYTES + 1)
    else:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MESSAGE_BYTES + 1)
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_MESSAGE_BYTES} bytes")
    return raw
