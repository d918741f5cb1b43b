"""The report observers a config asks for (DMARC aggregate rows, failure reports)."""
from __future__ import annotations

from ..config import Config
from ..observers import Observer
from .failure import FailureReporter
from .recorder import Recorder


def observers_from_config(config: Config) -> list[Observer]:
    """The DMARC report recorder and, when enabled, the failure reporter (RFC 9991).
    ``serve`` builds them inside every worker (after the fork), so each holds its own store
    connection."""
    recorder = Recorder.from_config(config)
    observers: list[Observer] = [recorder] if recorder.enabled else []
    if config.reports.failure_enabled:
        observers.append(FailureReporter(config))
    return observers
