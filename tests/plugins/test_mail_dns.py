"""Owner mail (SendKey, alerts) connects to the address its check resolved, never to a
second lookup's answer (DNS rebinding), and TLS still checks the mail server's name.

A real aiosmtpd on a loopback address, the gateway's DNS a rebinding resolver
(`gw.resolver`, the seam the data plane's SSRF tests use), certificates made here.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import ssl

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from xaiproxy_plugins import _sendkey

from tests.fakes import add_user
from tests.plugins.test_alerts import Inbox, free_port
from tests.plugins.test_sendkey import body, received
from tests.test_ssrf import Rebinding


def serve(inbox: Inbox, host: str, port: int, **smtp) -> Controller:
    controller = Controller(inbox, hostname=host, port=port, **smtp)
    controller.start()
    return controller


def loopback_mail_port(inbox: Inbox) -> tuple[Controller, str]:
    """aiosmtpd on port 2525 (a port a tenant may use) of a random 127.x.y.z address."""
    for _ in range(20):
        host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        try:
            return serve(inbox, host, 2525), host
        except (OSError, RuntimeError):
            continue
    pytest.skip("no free loopback address for port 2525")


async def test_a_tenant_mail_server_that_rebinds_to_loopback_gets_nothing(make_gateway, caplog):
    inbox = Inbox()
    controller, loopback = loopback_mail_port(inbox)
    try:
        api = await make_gateway(allow_private_providers=False)
        dns = api.gw.resolver = Rebinding("8.8.8.8", loopback)
        _, tenant = await add_user(api, credit=50, Owner=True)
        # Checked while the name answers a public address…
        config = {"EMAIL_SMTP": "mail.test", "EMAIL_PORT": 2525, "EMAIL_TLS": False}
        r = await api.put("/x-config", config, key=tenant)
        assert r.status == 200, r.body
        assert dns.asked == ["mail.test"]
        # …then it answers a loopback address where a mail server listens: refused.
        r = await api.post("/x-users", body("rebound", SendKey=True), key=tenant)
        assert r.status == 200, r.body
        for _ in range(250):
            if "SendKey mail" in caplog.text:
                break
            await asyncio.sleep(0.02)
        assert "Refused" in caplog.text
        assert dns.asked == ["mail.test"] * 2  # one lookup per send, no second opinion
        await asyncio.sleep(0.2)
        assert inbox.messages == []
        # Root's mail server may be local: the same name reaches it, at that address.
        config["EMAIL_PORT"] = 2525
        assert (await api.put("/x-config", config)).status == 200
        assert (await api.post("/x-users", body("root-mailed", SendKey=True))).status == 200
        (msg,) = await received(inbox)
        assert msg.rcpt_tos == ["root-mailed@example.com"]
    finally:
        controller.stop()


def certificates(tmp_path, name: str):
    """A CA (its PEM file) and a server context whose certificate it signed for `name`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, issuer: str, public, ca: bool, san: str | None):
        b = x509.CertificateBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        )
        b = b.issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        b = b.public_key(public).serial_number(x509.random_serial_number())
        b = b.not_valid_before(now - datetime.timedelta(hours=1))
        b = b.not_valid_after(now + datetime.timedelta(days=1))
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return b.sign(key, hashes.SHA256())

    ca = cert("test mail CA", "test mail CA", key.public_key(), True, None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    leaf = x509.CertificateBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    leaf = leaf.issuer_name(ca.subject).public_key(server_key.public_key())
    leaf = leaf.serial_number(x509.random_serial_number())
    leaf = leaf.not_valid_before(now - datetime.timedelta(hours=1))
    leaf = leaf.not_valid_after(now + datetime.timedelta(days=1))
    leaf = leaf.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    leaf = leaf.sign(key, hashes.SHA256())
    ca_file, cert_file, key_file = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


@pytest.mark.parametrize(("cert_name", "delivered"), [("mail.test", True), ("other.test", False)])
async def test_starttls_checks_the_host_name_at_the_resolved_address(
    make_gateway, tmp_path, monkeypatch, caplog, cert_name, delivered
):
    ca_file, context = certificates(tmp_path, cert_name)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the gateway trusts this CA only
    inbox = Inbox()
    controller = serve(inbox, "127.0.0.1", free_port(), tls_context=context, require_starttls=True)
    try:
        api = await make_gateway()
        dns = api.gw.resolver = Rebinding("127.0.0.1")
        config = {"EMAIL_SMTP": "mail.test", "EMAIL_PORT": controller.port}
        r = await api.put("/x-config", config | {"EMAIL_TLS": "starttls"})
        assert r.status == 200, r.body
        assert (await api.post("/x-users", body("tls-mailed", SendKey=True))).status == 200
        if delivered:  # the certificate names mail.test: checked against the name, not the IP
            (msg,) = await received(inbox)
            assert msg.rcpt_tos == ["tls-mailed@example.com"]
            await _sendkey.drain()  # the client's QUIT and TLS close, before the loop ends
        else:
            for _ in range(250):
                if "SendKey mail" in caplog.text:
                    break
                await asyncio.sleep(0.02)
            assert "SendKey mail" in caplog.text and inbox.messages == []
        assert dns.asked == ["mail.test"]
    finally:
        controller.stop()
