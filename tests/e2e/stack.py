"""The end-to-end stack on loopback: a real Postfix configured from contrib/postfix/, a real
``authfilter serve`` process, and the Python SMTP sink as the final destination.

    client --> Postfix smtpd (front, smtpd_proxy_filter) --> authfilter serve
           --> Postfix smtpd (reinjection, XFORWARD) --> queue --> smtp --> SmtpSink

or, as a milter (:class:`MilterPostfix`, from the ``*.milter`` files):

    client --> Postfix smtpd (front or submission) --> queue --> smtp --> SmtpSink
    sendmail(1) --> postdrop --> pickup --> cleanup --> queue       (both: smtpd_milters /
                                                                     non_smtpd_milters on
                                                                     authfilter's sockets)

Every process started here is stopped by its PID (never by name); Postfix by ``postfix stop``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib" / "postfix"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
SENDMAIL = shutil.which("sendmail") or "/usr/sbin/sendmail"
SOCKET_DIR = "/run/authfilter"             # where the contrib files put authfilter's sockets

POSTFIX_DAEMONS = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfix_unusable() -> str | None:
    """Why the e2e suite cannot run here, or None."""
    if not os.path.exists(POSTFIX):
        return "Postfix is not installed (/usr/sbin/postfix; Debian package 'postfix')"
    if os.geteuid() != 0:
        return "starting a private Postfix instance needs root"
    return None


def wait_port(port: int, *, up: bool, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return True
        except OSError:
            if not up:
                return True
        time.sleep(0.05)
    return False


class Postfix:
    """A private Postfix instance (``postfix -c DIR``) with the README's master.cf services."""

    MAIN_CF = "main.cf"

    def __init__(self, base: Path, *, front_port: int, proxy_port: int, reinject_port: int,
                 relay_port: int, submission_port: int, submission_proxy_port: int) -> None:
        self.base = base
        self.etc = base / "etc"
        self.queue = base / "queue"
        self.log = base / "postfix.log"
        self.front_port, self.proxy_port = front_port, proxy_port
        self.reinject_port, self.relay_port = reinject_port, relay_port
        self.submission_port, self.submission_proxy_port = submission_port, submission_proxy_port

    def master_cf(self, *, reinjection: bool = True) -> str:
        """contrib/postfix/master.cf with this instance's ports and paths substituted."""
        text = (CONTRIB / "master.cf").read_text()
        text = text.replace("\nsmtp      inet", f"\n127.0.0.1:{self.front_port} inet")
        text = text.replace("127.0.0.1:10025", f"127.0.0.1:{self.proxy_port}")
        text = text.replace("127.0.0.1:10026", f"127.0.0.1:{self.reinject_port}")
        text = text.replace("127.0.0.1:10027", f"127.0.0.1:{self.submission_proxy_port}")
        text = self._test_submission(text)
        if not reinjection:                       # the upstream "stopped": service commented out
            lines, in_service = [], False
            for line in text.split("\n"):
                if line.startswith(f"127.0.0.1:{self.reinject_port} inet"):
                    in_service = True
                elif not line.startswith((" ", "\t")):
                    in_service = False
                lines.append("#" + line if in_service else line)
            text = "\n".join(lines)
        return text + POSTFIX_DAEMONS

    def _test_submission(self, text: str) -> str:
        """The submission service on this instance's port.  The one departure from the
        README's snippets: the tests have no SASL server, so "authenticated" is "from
        mynetworks" and TLS is not required."""
        text = text.replace("\nsubmission inet", f"\n127.0.0.1:{self.submission_port} inet")
        text = text.replace("  -o smtpd_tls_security_level=encrypt\n  -o smtpd_sasl_auth_enable=yes\n",
                            "  -o smtpd_tls_security_level=none\n")
        return text.replace("permit_sasl_authenticated,reject", "permit_mynetworks,reject")

    def contrib_main_cf(self) -> str:
        return (CONTRIB / self.MAIN_CF).read_text()

    def write_config(self) -> None:
        for d in (self.etc, self.queue, self.base / "data"):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.base / "data", "postfix", "postfix")
        main = self.contrib_main_cf() + f"""
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.base / 'data'}
maillog_file = {self.log}
maillog_file_prefixes = {self.base}
myhostname = mx.e2e.test
mydomain = e2e.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{self.relay_port}
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
in_flow_delay = 0s
biff = no
smtputf8_enable = no
"""
        (self.etc / "main.cf").write_text(main)
        (self.etc / "master.cf").write_text(self.master_cf())

    def _postfix(self, *args: str) -> None:
        result = subprocess.run([POSTFIX, "-c", str(self.etc), *args], capture_output=True,
                                text=True, timeout=60)
        if result.returncode != 0:
            # Postfix prints diagnostics only to a terminal; run once more under script(1)
            detail = subprocess.run(["script", "-eqc", f"{POSTFIX} -c {self.etc} {' '.join(args)}",
                                     "/dev/null"], capture_output=True, text=True, timeout=60) \
                if shutil.which("script") else result
            raise RuntimeError(f"postfix {' '.join(args)} failed: {detail.stdout}{detail.stderr}")

    def start(self) -> None:
        self.write_config()
        self._postfix("check")
        self._postfix("start")
        if not wait_port(self.front_port, up=True):
            raise RuntimeError(f"Postfix did not listen on {self.front_port}: {self.log_text()[-2000:]}")

    def set_reinjection(self, running: bool) -> None:
        """Stop or start the after-filter smtpd (authfilter's upstream) with a reload."""
        (self.etc / "master.cf").write_text(self.master_cf(reinjection=running))
        self._postfix("reload")
        if not wait_port(self.reinject_port, up=running):
            raise RuntimeError(f"reinjection service did not {'start' if running else 'stop'}")

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True, timeout=60)
        pid_file = self.queue / "pid" / "master.pid"
        if pid_file.exists():
            try:
                pid = int(pid_file.read_text().strip())
            except ValueError:
                return
            end = time.monotonic() + 10
            while time.monotonic() < end and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def queued(self, queue: str) -> list[Path]:
        return [p for p in (self.queue / queue).rglob("*") if p.is_file()]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class MilterPostfix(Postfix):
    """A private Postfix wired to authfilter as a milter exactly as contrib/postfix/
    main.cf.milter and master.cf.milter say, with authfilter's sockets in ``socket_dir``
    instead of /run/authfilter: the public smtpd on ``front_port`` (smtpd_milters), the
    submission service on ``submission_port``, sendmail(1) through non_smtpd_milters."""

    MAIN_CF = "main.cf.milter"

    def __init__(self, base: Path, *, front_port: int, submission_port: int, relay_port: int,
                 socket_dir: Path) -> None:
        super().__init__(base, front_port=front_port, proxy_port=0, reinject_port=0,
                         relay_port=relay_port, submission_port=submission_port,
                         submission_proxy_port=0)
        self.socket_dir = socket_dir

    def contrib_main_cf(self) -> str:
        return sockets_in(super().contrib_main_cf(), self.socket_dir)

    def master_cf(self, *, reinjection: bool = True) -> str:
        text = sockets_in((CONTRIB / "master.cf.milter").read_text(), self.socket_dir)
        text = text.replace("\nsmtp      inet", f"\n127.0.0.1:{self.front_port} inet")
        text = self._test_submission(text)
        return text + daemons_not_in(text)

    def sendmail(self, raw: bytes, mail_from: str, recipients: list[str]) -> None:
        """``sendmail -C <this instance> -f mail_from recipients < raw``, as cron would (Postfix's
        sendmail(1): postdrop -> maildrop queue -> pickup -> cleanup with non_smtpd_milters)."""
        local = raw.replace(b"\r\n", b"\n")       # a local program writes UNIX line ends
        result = subprocess.run([SENDMAIL, "-C", str(self.etc), "-i", "-f", mail_from, "--",
                                 *recipients], input=local, capture_output=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"sendmail exited {result.returncode}: "
                               f"{result.stderr.decode(errors='replace')}")


def sockets_in(text: str, socket_dir: Path) -> str:
    """``text`` (a contrib file) with authfilter's sockets in ``socket_dir``."""
    return text.replace(SOCKET_DIR + "/", f"{socket_dir}/")


def daemons_not_in(master_cf: str) -> str:
    """The lines of :data:`POSTFIX_DAEMONS` for services that ``master_cf`` does not define."""
    def service(line: str) -> str:
        return line.split()[0] if line.strip() and not line.startswith(("#", " ", "\t")) else ""
    defined = {service(line) for line in master_cf.splitlines()} - {""}
    return "".join(line + "\n" for line in POSTFIX_DAEMONS.splitlines()
                   if service(line) not in defined)


def contrib_milter_listeners(socket_dir: Path) -> str:
    """The ``[[milter.listeners]]`` tables of contrib/authfilter.toml (what the ``*.milter``
    files connect to), with their sockets in ``socket_dir``: TOML to end a test's config with."""
    tables = tomllib.loads((ROOT / "contrib" / "authfilter.toml").read_text())["milter"]["listeners"]
    lines = []
    for table in tables:
        lines.append("[[milter.listeners]]")
        for key, value in table.items():
            if isinstance(value, str):
                value = json.dumps(sockets_in(value, socket_dir))
            elif isinstance(value, bool):
                value = "true" if value else "false"
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


class Authfilter:
    """``python -m authfilter serve --config FILE`` as a child process."""

    def __init__(self, config_file: Path, port: int, log_file: Path) -> None:
        self.config_file, self.port, self.log_file = config_file, port, log_file
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.log_file.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "authfilter", "serve", "--config",
                                         str(self.config_file)], cwd=ROOT, stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL)
        log.close()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"authfilter serve exited: {self.log_text()[-2000:]}")
            if wait_port(self.port, up=True, timeout=0.2):
                return
        raise RuntimeError(f"authfilter serve did not listen: {self.log_text()[-2000:]}")

    def children(self) -> list[int]:
        if self.process is None:
            return []
        try:
            text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        workers = self.children()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        for pid in workers:                         # only if the supervisor failed to stop them
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def delivered(sink, message_id: str) -> list:
    """The messages the sink received with this Message-ID."""
    needle = f"Message-ID: {message_id}\r\n".encode()
    return [m for m in sink.messages if needle in m.content]
