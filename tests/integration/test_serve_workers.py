"""Worker lifecycle under `authfilter serve`: a worker killed with SIGKILL takes its helper
processes (offload pool, forkserver, resource tracker) with it, the supervisor starts a new
one, and after a stop no process of ours remains."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parents() -> dict[int, int]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            out[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(pid: int) -> set[int]:
    tree = parents()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in tree.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists()
            and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()}


def wait_for(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_killed_worker_leaves_nothing_behind_and_a_stop_leaves_nothing(tmp_path):
    port = free_port()
    config = tmp_path / "authfilter.toml"
    config.write_text(f'[proxy]\nworkers = 2\noffload_workers = 1\nupstream = "127.0.0.1:{free_port()}"\n'
                      f'[[proxy.listeners]]\naddress = "127.0.0.1:{port}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "authfilter", "serve", "--config", str(config)],
                            env=dict(os.environ, STATE_DIRECTORY=str(tmp_path)), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # two workers, each with its forkserver, pool process and resource tracker
        assert wait_for(lambda: len(descendants(proc.pid)) >= 2 * 4), descendants(proc.pid)
        workers = {p for p, parent in parents().items() if parent == proc.pid}
        victim = min(workers)
        helpers = descendants(victim)
        assert helpers, "the worker has helper processes"
        seen = descendants(proc.pid)
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: not alive(helpers)), f"left behind: {alive(helpers)}"
        assert wait_for(lambda: len({p for p, parent in parents().items()
                                     if parent == proc.pid} - {victim}) == 2)   # restarted
        seen |= descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert wait_for(lambda: not alive(seen), 10), f"still running: {alive(seen)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
