"""`authfilter serve` under systemd's Type=notify: READY=1 once every listener is bound (so
`Before=postfix.service` means listening), STOPPING=1 when a drain begins; one sender, the main
process, whatever the number of workers."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from tests.support import free_port


def receive(sock: socket.socket, timeout: float) -> dict[str, str]:
    sock.settimeout(timeout)
    data, _ = sock.recvfrom(4096)
    return dict(line.split("=", 1) for line in data.decode().splitlines())


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_when_listening_and_stopping_on_sigterm(tmp_path, workers):
    port = free_port()
    config = tmp_path / "authfilter.toml"
    # no milter: the embedded default port 10030 may be another test's (test_serve_defaults)
    config.write_text(f'[proxy]\nworkers = {workers}\nupstream = "127.0.0.1:{free_port()}"\n'
                      f'[milter]\nlisteners = []\n'
                      f'[[proxy.listeners]]\naddress = "127.0.0.1:{port}"\n')
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(tmp_path / "notify"))
        env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), STATE_DIRECTORY=str(tmp_path))
        proc = subprocess.Popen([sys.executable, "-m", "authfilter", "serve", "--config", str(config)],
                                env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            ready = receive(manager, 30)
            assert ready == {"READY": "1", "MAINPID": str(proc.pid)}
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                assert client.recv(100).startswith(b"220 ")     # listening when READY came
            proc.send_signal(signal.SIGTERM)
            assert receive(manager, 30) == {"STOPPING": "1"}
            out = proc.communicate(timeout=30)[0].decode()
            assert proc.returncode == 0, out
            manager.settimeout(0.5)
            with pytest.raises(TimeoutError):                  # nothing more, from no worker
                manager.recvfrom(4096)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_without_a_service_manager_nothing_is_sent(monkeypatch):
    from authfilter.systemd import notify
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_an_unreachable_service_manager_is_a_warning_not_a_crash(monkeypatch, tmp_path, caplog):
    from authfilter.systemd import notify
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    started = time.monotonic()
    assert notify("READY=1") is False
    assert time.monotonic() - started < 1 and "cannot notify the service manager" in caplog.text
