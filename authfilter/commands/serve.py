"""``authfilter serve``: the SMTP proxy and the milter (see authfilter/service.py)."""
from __future__ import annotations

import argparse

from .common import add_config_argument, load_config_or_exit


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the filter: the SMTP proxy and the milter listeners",
                       description="Listen for SMTP (by default on 127.0.0.1:10025), verify "
                                   "SPF, DKIM, ARC and DMARC, apply the policy and relay accepted "
                                   "mail upstream (by default to 127.0.0.1:10026).  SIGHUP "
                                   "reloads the config and policy; SIGTERM drains and stops.")
    add_config_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..logsetup import configure
    from ..memory import keep_freed_buffers
    from ..reports.hooks import observers_from_config
    from ..service import load_config, serve

    config = load_config_or_exit(args.config, load_config)
    configure(config)
    keep_freed_buffers()                    # before the workers fork: they inherit it
    return serve(args.config, config, observers_from_config)
