"""Helpers shared by the command modules: loading the config with one clear error."""
from __future__ import annotations

import sys

from .. import config as config_mod
from ..config import Config, ConfigError


def add_config_argument(parser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="TOML config file (default: embedded defaults)")


def load_config_or_exit(path: str | None) -> Config:
    """The config, or exit 2 with every problem listed by key path."""
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        sys.stderr.write("authfilter: invalid configuration:\n")
        for problem in exc.problems:
            sys.stderr.write(f"  {problem}\n")
        raise SystemExit(2) from None
