"""The README's promises that can drift: the config reference and the quick-start commands."""
from pathlib import Path

from authfilter.config import reference_markdown

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
QUICK_START = ("apt-get install -y python3-venv && python3 -m venv .venv && .venv/bin/pip install . "
               "&& .venv/bin/authfilter serve")
""":mod:`tests.integration.test_serve_defaults` runs it as written."""


def test_config_reference_in_the_readme_is_the_generated_one():
    start = README.index("<!-- config-reference:start -->\n") + len("<!-- config-reference:start -->\n")
    end = README.index("<!-- config-reference:end -->")
    assert README[start:end] == reference_markdown(), \
        "regenerate: python -m authfilter config reference, between the config-reference markers"


def test_quick_start_commands_are_the_ones_ci_runs():
    first_screen = README[:README.index("## What it does")]
    assert QUICK_START in first_screen
    assert "bash .ci/run" in first_screen
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python3 -m pytest -q tests"
    assert f"`{command}`" in first_screen and ci.rstrip().endswith(f"exec {command}")


def test_the_postfix_files_in_the_readme_are_the_contrib_files():
    for name in ("master.cf", "main.cf"):
        marker = f"<!-- contrib/postfix/{name} -->\n```\n"
        start = README.index(marker) + len(marker)
        shown = README[start:README.index("```", start)]
        assert shown == (ROOT / "contrib" / "postfix" / name).read_text(), \
            f"README's {name} differs from contrib/postfix/{name}"
