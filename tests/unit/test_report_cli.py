"""``authfilter report generate`` and ``report show`` on a SQLite store; usage errors."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from authfilter.cli import main
from authfilter.commands.report import parse_time
from authfilter.reports.backends import open_store
from authfilter.reports.rows import EvaluationRow

DAY = 86400
BEGIN = parse_time("2026-05-04")


def row(ip: str, passed: bool, disposition: str, domain="example.com", at=BEGIN + 3600):
    return EvaluationRow(at, domain, domain, domain, domain, "", ip, domain, "mfrom",
                         "pass" if passed else "fail", "", 0, int(passed), disposition, "",
                         "p=reject;rua=mailto:d@" + domain, "treewalk")


@pytest.fixture
def cfg(tmp_path):
    url = f"sqlite://{tmp_path / 'r.sqlite'}"
    store = open_store(url)
    store.insert_rows([row("192.0.2.1", True, "none")] * 5 + [row("203.0.113.9", False, "reject")] * 3
                      + [row("198.51.100.1", False, "reject")]
                      + [row("192.0.2.1", True, "none", domain="other.example")]
                      + [row("192.0.2.1", True, "none", at=BEGIN + DAY + 10)])
    store.close()
    path = tmp_path / "a.toml"
    path.write_text(f'[reports]\nstore = "{url}"\nsubmitter = "mx.receiver.example"\n')
    return str(path)


def test_generate_writes_one_file_per_domain_and_period(cfg, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", "generate", "-c", cfg, "--out", str(out), "--since", "2026-05-04",
                 "--until", "2026-05-06"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert [n.split("!")[:4] for n in names] == [
        ["mx.receiver.example", "example.com", str(BEGIN), str(BEGIN + DAY - 1)],
        ["mx.receiver.example", "example.com", str(BEGIN + DAY), str(BEGIN + 2 * DAY - 1)],
        ["mx.receiver.example", "other.example", str(BEGIN), str(BEGIN + DAY - 1)]]
    assert all(n.endswith(".xml.gz") for n in names)
    first = gzip.decompress((out / names[0]).read_bytes()).decode()
    assert first.count("<record>") == 3 and "<count>5</count>" in first
    assert "(9 messages, 3 records)" in capsys.readouterr().out


def test_generate_plain_xml_for_one_domain(cfg, tmp_path):
    out = tmp_path / "out"
    assert main(["report", "generate", "-c", cfg, "--out", str(out), "--date", "2026-05-04",
                 "--domain", "other.example", "--plain"]) == 0
    (only,) = out.iterdir()
    assert only.name.endswith(".xml") and only.read_text().startswith("<?xml")


def test_show_summarizes_per_domain(cfg, capsys):
    assert main(["report", "show", "-c", cfg, "--date", "2026-05-04", "--top", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"store sqlite://{Path(cfg).parent / 'r.sqlite'} ({cfg})\n")
    assert "example.com: 9 messages, 5 pass, 4 fail (disposition: none 5, reject 4)" in text
    assert "top failing sources: 203.0.113.9 (3)\n" in text
    assert main(["report", "show", "-c", cfg, "--date", "2026-05-04", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["store"] == f"sqlite://{Path(cfg).parent / 'r.sqlite'}"
    example = data["domains"][0]
    assert (example["domain"], example["messages"], example["pass"], example["fail"]) == \
        ("example.com", 9, 5, 4)
    assert example["top_failing_sources"] == [{"ip": "203.0.113.9", "messages": 3},
                                              {"ip": "198.51.100.1", "messages": 1}]


@pytest.mark.parametrize("argv,message", [
    (["show", "--since", "2026-05-05", "--until", "2026-05-04"], "--until must be after --since"),
    (["show", "--date", "yesterday"], "is not YYYY-MM-DD"),
    (["send", "--dns", "not an address"], ""),
])
def test_usage_errors_exit_2_without_a_traceback(cfg, capsys, argv, message):
    assert main(["report", argv[0], "-c", cfg, *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_store_that_cannot_be_opened_exits_1(tmp_path, capsys):
    path = tmp_path / "b.toml"
    path.write_text('[reports]\nstore = "postgresql://nobody@127.0.0.1:1/x?connect_timeout=1"\n')
    assert main(["report", "show", "-c", str(path)]) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_config_rejects_bad_report_settings(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('[reports]\nstore = "mysql://x"\nperiod = 7000\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "show", "-c", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "reports.store" in err and "reports.period: 7000 does not divide a day" in err


def test_a_store_password_is_never_shown():
    from authfilter.reports.backends import shown
    assert shown("postgresql://dmarc:s3cret@db.example:5432/reports") == \
        "postgresql://dmarc:***@db.example:5432/reports"
    assert shown("postgresql://db.example/reports") == "postgresql://db.example/reports"
