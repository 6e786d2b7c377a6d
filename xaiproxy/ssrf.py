"""The SSRF rule, in one place: which provider addresses a key may reach.

Keys of non-root owners may not reach non-global addresses (loopback, private,
link-local, CGNAT, reserved…) unless the operator starts the gateway with
XAI_ALLOW_PRIVATE_PROVIDERS=1. Checked when a key is added and again at connect time.
"""

from __future__ import annotations

import asyncio
import ipaddress


def is_private(address: str) -> bool:
    """True for any address that is not globally routable (unparsable counts as private)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global


def restricted(owner_is_root: bool, settings) -> bool:
    """Whether the rule applies to a key of this owner."""
    return not owner_is_root and not settings.allow_private_providers


async def resolves_private(host: str) -> bool | None:
    """True if the host is or resolves to a private address; None if it does not resolve."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return is_private(host)
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return None
    return any(is_private(info[4][0]) for info in infos)
