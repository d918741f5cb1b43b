"""``authfilter install-service``: the system user, /etc/authfilter and the systemd units.

For the documented install (``python3 -m venv /opt/authfilter && /opt/authfilter/bin/pip install
.``, or pipx): run once as root with the installed command.  Idempotent: what exists is kept
(the config file above all) and said so.  ``--root DIR`` does everything below DIR instead of
/ (users and groups with useradd/groupadd ``--root``), for images and for the tests.
"""
from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

USER = "authfilter"
UNITS = ("authfilter.service", "authfilter-report.service", "authfilter-report.timer")
DOCUMENTED_PREFIX = "/opt/authfilter"           # what the shipped unit files name
CHECKOUT = Path(__file__).resolve().parents[2]
INSTALLED = Path(sys.prefix) / "share" / "authfilter"


def register(sub) -> None:
    p = sub.add_parser("install-service", help="create the authfilter user, /etc/authfilter and "
                                               "the systemd units (as root)",
                       description="Create the 'authfilter' system user and group, /etc/authfilter "
                                   "(a commented config that passes 'config check', keys/ for "
                                   "signing keys), and the systemd units with ExecStart= this "
                                   "installation's command.  Existing files are kept.")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="install below DIR instead of / (default /)")
    p.add_argument("--user", default=USER, help=f"system user and group (default {USER})")
    p.set_defaults(func=run)


def shipped(name: str) -> Path:
    """A file shipped with authfilter: from a checkout, or where pip put it (data-files)."""
    for candidate in (CHECKOUT / "systemd" / name, CHECKOUT / "contrib" / name,
                      INSTALLED / "systemd" / name, INSTALLED / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name} is not installed with authfilter (looked in {CHECKOUT} "
                            f"and {INSTALLED})")


def unit_text(name: str, prefix: str, user: str) -> str:
    """A shipped unit with ExecStart= this installation's command and the chosen user."""
    text = shipped(name).read_text()
    text = text.replace(f"{DOCUMENTED_PREFIX}/bin/authfilter", f"{prefix}/bin/authfilter")
    return text.replace(f"User={USER}\n", f"User={user}\n").replace(f"Group={USER}\n", f"Group={user}\n")


class Installer:
    def __init__(self, root: Path, user: str) -> None:
        self.root = root
        self.user = user
        self.done: list[str] = []

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def say(self, text: str) -> None:
        self.done.append(text)
        print(text)

    # -- the user ---------------------------------------------------------------------------
    def _ids(self) -> tuple[int, int] | None:
        """uid and gid of the user below the root, None when it does not exist."""
        if self.root == Path("/"):
            try:
                entry = pwd.getpwnam(self.user)
            except KeyError:
                return None
            return entry.pw_uid, entry.pw_gid
        for line in self.path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == self.user:
                return int(fields[2]), int(fields[3])
        return None

    def _group_exists(self) -> bool:
        if self.root == Path("/"):
            try:
                grp.getgrnam(self.user)
                return True
            except KeyError:
                return False
        return any(line.split(":")[0] == self.user
                   for line in self.path("/etc/group").read_text().splitlines())

    def ensure_user(self) -> tuple[int, int]:
        root = [] if self.root == Path("/") else ["--root", str(self.root)]
        if not self._group_exists():
            subprocess.run(["groupadd", "--system", *root, self.user], check=True)
            self.say(f"created group {self.user}")
        ids = self._ids()
        if ids is None:
            subprocess.run(["useradd", "--system", "--gid", self.user, "--no-create-home",
                            "--home-dir", "/var/lib/authfilter", "--shell", "/usr/sbin/nologin",
                            "--comment", "authfilter mail filter", *root, self.user], check=True)
            ids = self._ids()
            assert ids is not None
            self.say(f"created system user {self.user} (uid {ids[0]}, no login)")
        else:
            self.say(f"kept existing user {self.user} (uid {ids[0]})")
        return ids

    def let_postfix_connect(self) -> None:
        """Postfix's smtpd must reach the milter socket (mode 0660, our group): the postfix
        user joins our group, as it joins opendkim's on Debian."""
        passwd = self.path("/etc/passwd").read_text().splitlines()
        if not any(line.split(":")[0] == "postfix" for line in passwd):
            return
        members = next((line.split(":")[3].split(",") for line in
                        self.path("/etc/group").read_text().splitlines()
                        if line.split(":")[0] == self.user), [])
        if "postfix" in members:
            self.say(f"kept user postfix in group {self.user}")
            return
        root = [] if self.root == Path("/") else ["--root", str(self.root)]
        subprocess.run(["usermod", "--append", "--groups", self.user, *root, "postfix"], check=True)
        self.say(f"added user postfix to group {self.user} (for the milter socket)")

    # -- files ------------------------------------------------------------------------------
    def directory(self, absolute: str, mode: int, uid: int, gid: int) -> None:
        path = self.path(absolute)
        existed = path.is_dir()
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        self.say(f"{'kept' if existed else 'created'} {absolute}/ (mode {mode:04o})")

    def file(self, absolute: str, text: str, mode: int, uid: int, gid: int, *,
             keep: bool) -> None:
        """Write ``text`` unless ``keep`` and the file exists (a config an admin edited)."""
        path = self.path(absolute)
        if keep and path.exists():
            self.say(f"kept existing {absolute}")
            return
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".new")
        tmp.write_text(text)
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        self.say(f"{'updated' if existed else 'wrote'} {absolute} (mode {mode:04o})")

    def install(self) -> None:
        uid, gid = self.ensure_user()
        self.let_postfix_connect()
        # root owns the config (the service cannot change its own rules); the group reads it.
        self.directory("/etc/authfilter", 0o750, 0, gid)
        self.directory("/etc/authfilter/keys", 0o700, uid, gid)
        self.file("/etc/authfilter/authfilter.toml", shipped("authfilter.toml").read_text(),
                  0o640, 0, gid, keep=True)
        for name in UNITS:
            self.file(f"/etc/systemd/system/{name}", unit_text(name, sys.prefix, self.user),
                      0o644, 0, 0, keep=False)


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        sys.stderr.write("authfilter install-service: error: run it as root\n")
        return 1
    root = Path(args.root)
    missing = [tool for tool in ("useradd", "groupadd", "usermod") if shutil.which(tool) is None]
    if missing:
        sys.stderr.write(f"authfilter install-service: error: {', '.join(missing)} not found "
                         f"(Debian package passwd)\n")
        return 1
    try:
        Installer(root, args.user).install()
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"authfilter install-service: error: {exc}\n")
        return 1
    if root == Path("/") and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        print("systemctl daemon-reload done")
    print("next: edit /etc/authfilter/authfilter.toml, then\n"
          "  authfilter config check /etc/authfilter/authfilter.toml\n"
          "  systemctl enable --now authfilter.service authfilter-report.timer\n"
          "and wire Postfix (README, 'Postfix wiring').")
    return 0
