"""Mail through an owner's EMAIL_* server, safe from DNS rebinding (SPEC 6, 9).

The host is resolved once (through `gw.resolver`), checked with the provider SSRF rule
for a non-root owner, and the checked address is what the socket connects to: a name
that answers public to the check and 127.0.0.1 a moment later never reaches a
loopback port. TLS (implicit or STARTTLS) still checks the certificate against the
host name, which aiosmtplib sends as SNI.
"""

from __future__ import annotations

import asyncio
import socket
from email.message import EmailMessage

import aiosmtplib

from xaiproxy import ssrf

DEFAULT_PORTS = {"true": 465, "starttls": 587}


def smtp_options(values: dict, timeout: float) -> dict:
    """aiosmtplib options from EMAIL_*: EMAIL_TLS true = implicit TLS, starttls, or false."""
    tls = str(values.get("EMAIL_TLS", "")).lower()
    options = {
        "hostname": values["EMAIL_SMTP"],
        "port": int(values.get("EMAIL_PORT") or DEFAULT_PORTS.get(tls, 25)),
        "use_tls": tls == "true",
        # Unset: STARTTLS when the server offers it; false: never.
        "start_tls": {"starttls": True, "false": False}.get(tls),
        "timeout": timeout,
    }
    if values.get("EMAIL_AUTH"):
        options["username"] = values["EMAIL_AUTH"]
        options["password"] = values.get("EMAIL_PASS", "")
    return options


async def send(gw, owner_id: int, msg: EmailMessage, seconds: float) -> None:
    """Send msg through the owner's server within `seconds` for the connect and as each
    SMTP step's timeout; raises ssrf.Refused, OSError or an SMTP error."""
    options = smtp_options(gw.config(owner_id).values, seconds)
    port = options.pop("port")
    allow = not ssrf.restricted(owner_id == gw.state.root.id, gw.settings)
    async with asyncio.timeout(seconds):
        found = await ssrf.resolve_checked(options["hostname"], port, allow, gw.resolver)
        sock = await _connect(found, port)
    try:  # hostname: what TLS sends as SNI and checks the certificate against
        client = aiosmtplib.SMTP(sock=sock, **options)
    except BaseException:
        sock.close()
        raise
    async with client:  # from here the connection's transport owns (and closes) the socket
        await client.send_message(msg)


async def _connect(found: list, port: int) -> socket.socket:
    """A socket connected to the first checked address that answers."""
    loop, error = asyncio.get_running_loop(), None
    for info in found:
        sock = socket.socket(info["family"], socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (info["host"], port))
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError("no address to connect to")
