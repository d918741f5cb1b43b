"""One pipeline, three front-ends: the same 20 messages through ``authfilter check --json``
(a subprocess), the pipeline API and the SMTP proxy (sink upstream) give identical verdicts,
actions and Authentication-Results values.  Real DNS on loopback throughout."""
from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import subprocess
import sys

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from authfilter.pipeline import Pipeline, SessionFacts
from tests.mailtools import header_fields, message, publish_domain, signed
from tests.proxyrunner import proxy_config

HELO = "mail.example.org"
CLIENT = "127.0.0.1"          # what the proxy sees of this test's client


@pytest.fixture(scope="module")
def ed_key():
    return ed25519.Ed25519PrivateKey.generate()


def ed_signed(raw: bytes, key) -> bytes:
    seed = base64.b64encode(key.private_bytes(serialization.Encoding.Raw,
                                              serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption()))
    return dkim.sign(raw, b"ed", b"example.org", seed, signature_algorithm=b"ed25519-sha256",
                     include_headers=[b"from", b"to", b"subject"]).replace(b"\n", b"\r\n") \
        .replace(b"\r\r\n", b"\r\n") + raw


def publish(zone, ed_key) -> None:
    public = ed_key.public_key().public_bytes(serialization.Encoding.Raw,
                                              serialization.PublicFormat.Raw)
    publish_domain(zone, "example.org")                                  # SPF pass, p=reject
    zone.add("ed._domainkey.example.org", "TXT", f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}")
    publish_domain(zone, "example.com", spf="v=spf1 ip4:192.0.2.0/24 -all",
                   dmarc="v=DMARC1; p=quarantine")
    publish_domain(zone, "example.net", spf=None, dmarc="v=DMARC1; p=none")
    publish_domain(zone, "lists.example", spf="v=spf1 ~all", dmarc=None)


def cases(ed_key) -> list[tuple[str, str, bytes, str]]:
    """(name, MAIL FROM, message, the action it must get): passes, failures of every kind,
    odd headers."""
    org = "alice@example.org"
    tampered = signed(message()).replace(b"Hello.", b"Hello!")
    listed = message("bob@example.com", extra_headers=b"List-Id: <l.lists.example>\r\n")
    forged = message(extra_headers=b"Authentication-Results: mx.test; dmarc=pass\r\n")
    long_field = message(extra_headers=b"X-Long: " + b" word" * 60 + b"\r\n\tmore\r\n")
    utf8 = message(subject="caf\u00e9 \u2615", body="\u00e9t\u00e9\r\n".encode())
    return [
        ("spf pass aligned", org, message(), "accept"),
        ("dkim and spf pass", org, signed(message()), "accept"),
        ("ed25519 signature", org, ed_signed(message(), ed_key), "accept"),
        ("two signatures", org, ed_signed(signed(message()), ed_key), "accept"),
        ("body changed after signing", org, tampered, "accept"),               # SPF still aligns
        ("spf fail, quarantine", "bob@example.com", message("bob@example.com"), "quarantine"),
        ("signed by another domain", "bob@example.com", signed(message("bob@example.com")),
         "quarantine"),
        ("dkim aligned, spf not", "x@example.com", signed(message()), "accept"),
        ("spoofed, p=reject", "x@example.com", message(), "reject"),
        ("null sender", "", signed(message()), "accept"),
        ("unknown selector", org, signed(message(), selector="nosuch"), "accept"),
        ("two From fields", org, message(extra_headers=b"From: eve@example.com\r\n"), "reject"),
        ("From without a domain", org, message(from_addr="undisclosed-recipients:;"), "reject"),
        ("p=none fail", "carol@example.net", message("carol@example.net"), "accept"),
        ("mailing list", "list@lists.example", listed, "quarantine"),          # reject softened
        ("forged results", org, forged, "accept"),
        ("subdomain From", "news@news.example.org", message("news@news.example.org"), "reject"),
        ("8-bit subject", org, utf8, "accept"),
        ("long folded header", org, long_field, "accept"),
        ("softfail sender", "list@lists.example", message("list@lists.example"), "accept"),
    ]


def unfolded(value: str) -> str:
    return " ".join(part.strip() for part in value.replace("\r\n", "\n").split("\n"))


def via_proxy(proxy, sink, mail_from: str, raw: bytes) -> str | None:
    """Send through the proxy; the A-R value the sink received, None when refused."""
    before = len(sink.messages)
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=10) as client:
        client.ehlo(HELO)
        try:
            client.sendmail(mail_from, ["bob@example.net"], raw)
        except smtplib.SMTPDataError:
            return None
    assert len(sink.messages) == before + 1
    [value] = [v for n, v in header_fields(sink.messages[-1].content)
               if n == "Authentication-Results" and v.startswith("mx.test;")]
    return value


def test_check_pipeline_and_proxy_agree_on_twenty_messages(zone, sink, start_proxy, ed_key,
                                                           tmp_path):
    publish(zone, ed_key)
    config_file = tmp_path / "authfilter.toml"
    config_file.write_text(f'[general]\nauthserv_id = "mx.test"\n[dns]\nnameservers = '
                           f'["{zone.address}"]\n[policy]\ntrusted_networks = []\n')
    proxy = start_proxy(proxy_config(sink.address))
    messages = cases(ed_key)
    assert len(messages) == 20

    async def via_pipeline():
        out = []
        async with Pipeline.open(str(config_file)) as pipeline:
            for _, mail_from, raw, _ in messages:
                tx = pipeline.begin(SessionFacts(client_ip=CLIENT, helo=HELO, mail_from=mail_from,
                                                 recipients=["bob@example.net"]))
                d = await tx.finish(raw)
                await tx.done(upstream_reply=None)
                [value] = [v for n, v in d.prepend if n == "Authentication-Results"]
                out.append((d.verdict.to_dict(), d.action, unfolded(value)))
        return out
    api = asyncio.run(via_pipeline())

    for (name, mail_from, raw, expected), (api_verdict, api_action, api_results) in zip(messages, api):
        r = subprocess.run([sys.executable, "-m", "authfilter", "check", "--config", str(config_file),
                            "--ip", CLIENT, "--helo", HELO, "--mail-from", mail_from, "--json", "-"],
                           input=raw, capture_output=True, timeout=60)
        assert r.returncode == 0, (name, r.stderr)
        cli = json.loads(r.stdout)
        cli_results, cli_action = cli.pop("authentication_results"), cli.pop("action")
        del cli["reason"], cli["reply"]

        relayed = via_proxy(proxy, sink, mail_from, raw)
        _, proxy_verdict, proxy_action, _, _ = proxy.observed[-1]

        assert cli == api_verdict == proxy_verdict.to_dict(), name
        assert cli_action == api_action == proxy_action.kind == expected, name
        assert cli_results == api_results, name
        assert (relayed is None) == (api_action == "reject"), name
        if relayed is not None:
            assert relayed == api_results, name

