"""Small helpers the tests share: a free loopback port, waiting for a condition, and
`authfilter serve` as a child process with its process tree."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, step: float = 0.05) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` seconds (asked once more at the end)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def serve(tmp_path: Path, config_text: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """`authfilter serve` on ``config_text`` (written to ``tmp_path``/authfilter.toml), its
    report store under ``tmp_path``."""
    config = tmp_path / "authfilter.toml"
    config.write_text(config_text)
    return subprocess.Popen([sys.executable, "-m", "authfilter", "serve", "--config", str(config)],
                            env=dict(os.environ, STATE_DIRECTORY=str(tmp_path)), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=stderr)


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            out[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def children(pid: int) -> set[int]:
    return {child for child, parent in parents().items() if parent == pid}


def descendants(pid: int) -> set[int]:
    tree = parents()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in tree.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (not exited, not a zombie)."""
    out = set()
    for p in pids:
        try:
            if "zombie" not in Path(f"/proc/{p}/status").read_text().lower():
                out.add(p)
        except OSError:
            continue
    return out
