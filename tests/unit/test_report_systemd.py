"""The report timer and service: a daily oneshot ``authfilter report send``."""
from __future__ import annotations

import configparser
from pathlib import Path

from authfilter.cli import build_parser

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str            # systemd keys are case-sensitive
    parser.read(SYSTEMD / name)
    return parser


def test_timer_runs_the_service_daily_and_catches_up():
    timer = unit("authfilter-report.timer")
    assert timer["Timer"]["OnCalendar"].startswith("*-*-* 00:30:00")
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_service_runs_report_send_with_the_shared_state_directory():
    service = unit("authfilter-report.service")["Service"]
    assert service["Type"] == "oneshot"
    assert service["StateDirectory"] == "authfilter"
    command = service["ExecStart"].split()
    assert command[0] == "/opt/authfilter/bin/authfilter"       # the documented install
    parsed = build_parser().parse_args(command[1:])
    assert (parsed.command, parsed.report_command) == ("report", "send")
    assert parsed.config == "/etc/authfilter/authfilter.toml"
