import subprocess
import sys
import tomllib

import pytest

from authfilter import config


def test_defaults_work_without_a_file():
    cfg = config.load(None)
    assert cfg.dns.nameservers == [] and cfg.dkim.max_signatures == 5
    assert cfg.dmarc.mode == "rfc9989"
    assert cfg.general.effective_authserv_id()


def test_file_values_are_typed(tmp_path):
    p = tmp_path / "a.toml"
    p.write_text('[dns]\nnameservers = ["127.0.0.1:5302"]\ntimeout = 1\n[dmarc]\nmode = "rfc7489"\n')
    cfg = config.load(p)
    assert cfg.dns.nameservers == ["127.0.0.1:5302"] and cfg.dns.timeout == 1.0
    assert isinstance(cfg.dns.timeout, float) and cfg.dmarc.mode == "rfc7489"


@pytest.mark.parametrize("text,problem", [
    ('[dns]\ntimeout = "fast"', 'dns.timeout: expected a number, got "fast"'),
    ('[dns]\nnameserver = []', "dns.nameserver: unknown key"),
    ('[dnss]\n', "dnss: unknown key"),
    ('[dmarc]\nmode = "7489"', "dmarc.mode: \"7489\" is not one of"),
    ('[dns]\nnameservers = ["localhost"]', "dns.nameservers: nameserver 'localhost'"),
    ('[dkim]\nmax_signatures = 0', "dkim.max_signatures: 0 is below the minimum 1"),
    ('[dkim]\nmax_signatures = true', "dkim.max_signatures: expected an integer"),
    ('dns = 3', "dns: expected a table"),
    ('[dns\n', "not valid TOML"),
])
def test_bad_values_name_the_key(tmp_path, text, problem):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(p)
    assert problem in str(err.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({"dns": {"timeout": "x", "lifetime": -1}, "spf": {"bogus": 1}})
    assert len(err.value.problems) == 3


def test_show_round_trips_through_toml():
    data = config.to_dict(config.load(None))
    assert tomllib.loads(config.to_toml(data)) == data
    assert config.from_dict(tomllib.loads(config.to_toml(data))) is not None


def test_cli_config_check_and_show(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[dns]\ntimeout = 'x'\n")
    r = subprocess.run([sys.executable, "-m", "authfilter", "config", "check", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "dns.timeout" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "authfilter", "config", "show"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and tomllib.loads(r.stdout)["dns"]["timeout"] == 2.0


def test_config_check_and_serve_refuse_the_same_unsafe_key_and_missing_policy(tmp_path):
    key = tmp_path / "example.org.s1.key"
    r = subprocess.run([sys.executable, "-m", "authfilter", "keygen", "--domain", "example.org",
                        "--selector", "s1", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    key.chmod(0o644)                                       # readable by everyone: refused
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'''[policy]\nname = "no-such-policy"\n\n[[signing.keys]]\nfrom_domains = ["example.org"]
domain = "example.org"\nselector = "s1"\nkey_file = "{key}"\n''')
    outputs = []
    for command in (["config", "check", str(cfg)], ["serve", "--config", str(cfg)]):
        r = subprocess.run([sys.executable, "-m", "authfilter", *command], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        outputs.append(r.stderr)
    assert outputs[0] == outputs[1]
    assert "no-such-policy" in outputs[0] and str(key) in outputs[0]


def test_show_changed_prints_only_what_differs_and_means_the_same_config(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('[general]\nauthserv_id = "mx.example.org"\n[dns]\ntimeout = 2.0\n'
                    '[[proxy.listeners]]\naddress = "127.0.0.1:2525"\n')
    r = subprocess.run([sys.executable, "-m", "authfilter", "config", "show", "--changed", str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shown = tomllib.loads(r.stdout)
    assert shown["general"] == {"authserv_id": "mx.example.org"}
    assert "dns" not in shown                     # set in the file, but to the default
    assert [lc["address"] for lc in shown["proxy"]["listeners"]] == ["127.0.0.1:2525"]
    assert config.to_dict(config.from_dict(shown)) == config.to_dict(config.load(str(path)))


def test_the_reference_documents_the_keys_of_every_array_table():
    keys = {key for key, *_ in config.reference()}
    for table, fields in (("proxy.listeners", ("address", "role", "arc_seal")),
                          ("milter.listeners", ("address", "role", "socket_group")),
                          ("signing.keys", ("domain", "selector", "key_file", "from_domains"))):
        assert {f"{table}[].{f}" for f in fields} <= keys, table
