"""How the CLI ends when a pipe breaks: quietly when its own output's reader left (`| head`),
with status 1 and one line otherwise (serve must never exit 0 for systemd's Restart=on-failure
to see nothing wrong)."""
import subprocess
import sys

SCRIPT = """
import os, sys
from authfilter import cli
from authfilter.commands import config_cmd
def broken(args):                  # a command whose helper process died under it
    raise BrokenPipeError(32, "Broken pipe")
config_cmd.run_show = broken
if sys.argv[1] == "reader-gone":
    r, w = os.pipe()
    os.close(r)
    os.dup2(w, 1)
sys.exit(cli.main(["config", "show"]))
"""


def run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                          timeout=60)


def test_a_broken_pipe_that_is_not_our_stdout_is_an_error():
    r = run("other")
    assert r.returncode == 1 and r.stderr.strip() == "authfilter: error: [Errno 32] Broken pipe"


def test_a_reader_that_left_our_stdout_is_a_quiet_end():
    r = run("reader-gone")
    assert r.returncode == 0 and r.stderr == ""
