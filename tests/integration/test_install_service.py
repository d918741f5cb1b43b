"""The service set-up: `authfilter install-service` below a scratch root (real useradd and
groupadd, --root), the unit files it writes (systemd-analyze), and their sandbox exposure."""
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("authfilter.service", "authfilter-report.service")
EXPOSURE_LIMIT = 2.0


def authfilter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "authfilter", *args], capture_output=True,
                          text=True, timeout=120)


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return tool


@pytest.fixture
def scratch_root(tmp_path):
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd (the real tools, with --root)")
    etc = tmp_path / "root" / "etc"
    etc.mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), etc / name)
    return tmp_path / "root"


def passwd_entry(root: Path, user: str) -> list[str]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        if line.split(":")[0] == user:
            return line.split(":")
    raise AssertionError(f"no user {user} below {root}")


def test_install_service_creates_user_config_keys_and_units_and_keeps_them(scratch_root):
    first = authfilter("install-service", "--root", str(scratch_root))
    assert first.returncode == 0, first.stderr
    name, _, uid, gid, _, home, shell = passwd_entry(scratch_root, "authfilter")
    assert (home, shell) == ("/var/lib/authfilter", "/usr/sbin/nologin") and int(uid) < 1000
    etc = scratch_root / "etc" / "authfilter"
    for path, mode, owner in ((etc, 0o750, 0), (etc / "keys", 0o700, int(uid)),
                              (etc / "authfilter.toml", 0o640, 0)):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, owner, int(gid)), path
    checked = authfilter("config", "check", str(etc / "authfilter.toml"))
    assert checked.returncode == 0, checked.stderr
    if any(line.startswith("postfix:") for line in (scratch_root / "etc/passwd").read_text().splitlines()):
        [group] = [line for line in (scratch_root / "etc/group").read_text().splitlines()
                   if line.startswith("authfilter:")]
        assert "postfix" in group.split(":")[3].split(",")    # reaches the milter socket
    unit = (scratch_root / "etc/systemd/system/authfilter.service").read_text()
    assert f"ExecStart={sys.prefix}/bin/authfilter serve --config /etc/authfilter/authfilter.toml" in unit
    assert "Type=notify" in unit and "SyslogIdentifier=authfilter" in unit

    (etc / "authfilter.toml").write_text('[policy]\nname = "monitor"\n')     # the admin's edit
    again = authfilter("install-service", "--root", str(scratch_root))
    assert again.returncode == 0, again.stderr
    assert "kept existing user authfilter" in again.stdout
    assert "added user postfix" not in again.stdout
    assert "kept existing /etc/authfilter/authfilter.toml" in again.stdout
    assert (etc / "authfilter.toml").read_text() == '[policy]\nname = "monitor"\n'


def test_keygen_gives_the_key_to_the_service_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    made = authfilter("keygen", "--domain", "example.org", "--selector", "s1", "--out",
                      str(tmp_path), "--owner", "nobody")
    assert made.returncode == 0, made.stderr
    st = (tmp_path / "example.org.s1.key").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 65534)
    assert "from_domains = [\"example.org\"]" in made.stderr and "active = true" in made.stderr
    unknown = authfilter("keygen", "--domain", "example.org", "--selector", "s2", "--out",
                         str(tmp_path), "--owner", "no-such-user")
    assert unknown.returncode == 2 and "no user 'no-such-user'" in unknown.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_units_are_sandboxed_within_the_exposure_limit(unit):
    out = subprocess.run([systemd_analyze(), "security", "--offline=yes", str(ROOT / "systemd" / unit)],
                         capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert level is not None, out.stdout + out.stderr
    assert float(level.group(1)) <= EXPOSURE_LIMIT, out.stdout


def test_units_written_for_this_installation_verify(tmp_path):
    """systemd-analyze verify on the units install-service writes (ExecStart= exists here)."""
    tool = systemd_analyze()
    from authfilter.commands.install_service import unit_text
    for name in ("authfilter.service", "authfilter-report.service", "authfilter-report.timer"):
        (tmp_path / name).write_text(unit_text(name, sys.prefix, "authfilter"))
    out = subprocess.run([tool, "verify", *(str(tmp_path / u) for u in
                                            ("authfilter.service", "authfilter-report.timer"))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stdout + out.stderr
