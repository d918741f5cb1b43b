"""A built wheel installs and runs outside the checkout: the command, its version, and the
bundled policies (installed under <prefix>/share/authfilter/policies)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installs_and_finds_its_policies(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    str(ROOT), "-w", str(wheels)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("authfilter-*.whl")
    venv = tmp_path / "venv"
    # the dependencies come from this interpreter's site-packages: the test is about our files
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True,
                   timeout=120)
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    run = lambda *args: subprocess.run([venv / "bin" / "authfilter", *args], capture_output=True,
                                       text=True, cwd=tmp_path, timeout=60)
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("authfilter ")
    config = tmp_path / "monitor.toml"
    config.write_text('[policy]\nname = "monitor"\n')
    checked = run("config", "check", str(config))
    assert checked.returncode == 0, checked.stderr
    assert (venv / "share" / "authfilter" / "policies" / "default.toml").is_file()
