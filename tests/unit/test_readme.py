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
    names = sorted(p.name for p in (ROOT / "contrib" / "postfix").iterdir() if p.name != "README.md")
    assert {"master.cf", "main.cf", "master.cf.milter", "main.cf.milter"} <= set(names)
    for name in names:                    # a new file there must be shown too
        marker = f"<!-- contrib/postfix/{name} -->\n```\n"
        start = README.index(marker) + len(marker)
        shown = README[start:README.index("```", start)]
        assert shown == (ROOT / "contrib" / "postfix" / name).read_text(), \
            f"README's {name} differs from contrib/postfix/{name}"


def test_the_milter_listeners_in_the_readme_are_the_contrib_ones():
    """The sockets main.cf.milter and master.cf.milter name are the listeners that
    contrib/authfilter.toml (installed by install-service) and the README's Milter wiring give,
    each with the role its Postfix parameter needs."""
    import re
    import tomllib

    contrib = tomllib.loads((ROOT / "contrib" / "authfilter.toml").read_text())["milter"]["listeners"]
    section = README[README.index("## Milter wiring\n"):]
    shown = section[section.index("```toml\n") + 8:]
    assert tomllib.loads(shown[:shown.index("```")])["milter"]["listeners"] == contrib
    roles = {t["address"]: t["role"] for t in contrib}
    postfix = ROOT / "contrib" / "postfix"
    main = (postfix / "main.cf.milter").read_text()
    master = (postfix / "master.cf.milter").read_text()
    wiring = {m[2]: m[1] for m in re.finditer(r"^(smtpd_milters|non_smtpd_milters) = \{ (unix:\S+),",
                                               main, re.M)}
    wiring |= {m[1]: "submission" for m in re.finditer(r"^  -o \{ smtpd_milters = \{ (unix:\S+),",
                                                        master, re.M)}
    needed = {"smtpd_milters": "inbound", "non_smtpd_milters": "local", "submission": "submission"}
    assert {address: needed[p] for address, p in wiring.items()} == roles
