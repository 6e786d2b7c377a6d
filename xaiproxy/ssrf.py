"""The SSRF rule, in one place: which provider addresses a key may reach.

Keys of non-root owners may not reach non-global addresses (loopback, private,
link-local, CGNAT, reserved…) unless the operator starts the gateway with
XAI_ALLOW_PRIVATE_PROVIDERS=1. Checked when a key is added and at connect time, where
`resolve_checked` resolves the host once and hands back only the addresses the rule
allows: those are the addresses connected to (`CheckedResolver` plugs it into aiohttp's
connector; the data plane's own client may call it directly).
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp import ThreadedResolver
from aiohttp.abc import AbstractResolver, ResolveResult

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")


class Refused(OSError):
    """No address of the host may be connected to (private, or it does not resolve)."""


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, NAT64, SIIT, compatible, 6to4)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _SIIT or (ip in _V4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_private(address: str) -> bool:
    """True for any address that is not globally routable (unparsable counts as private)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if ip.version == 6:
        if ip in _SITE_LOCAL or ip in _NAT64_LOCAL:
            return True
        ip = _embedded_v4(ip) or ip
    return not ip.is_global


def is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


async def resolve_checked(
    host: str,
    port: int = 0,
    allow_private: bool = False,
    resolver: AbstractResolver | None = None,
    family: int = socket.AF_UNSPEC,
) -> list[ResolveResult]:
    """Resolve once; the addresses to connect to, private ones dropped unless allowed.

    Raises Refused when the host does not resolve or no allowed address is left.
    """
    if is_literal(host):
        if not allow_private and is_private(host):
            raise Refused(f"{host} is not a public address")
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        return [
            {"hostname": host, "host": host, "port": port, "family": fam, "proto": 0, "flags": 0}
        ]
    try:
        infos = await (resolver or ThreadedResolver()).resolve(host, port, family)
    except (OSError, UnicodeError) as exc:
        raise Refused(f"{host} does not resolve") from exc
    allowed = infos if allow_private else [i for i in infos if not is_private(i["host"])]
    if not allowed:
        raise Refused(f"{host} resolves to no public address")
    return allowed


class CheckedResolver(AbstractResolver):
    """An aiohttp resolver that only ever returns addresses the SSRF rule allows."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self.inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return await resolve_checked(host, port, False, self.inner, family)

    async def close(self) -> None:
        """Nothing to close: the inner resolver belongs to whoever made it."""


def restricted(owner_is_root: bool, settings) -> bool:
    """Whether the rule applies to a key of this owner."""
    return not owner_is_root and not settings.allow_private_providers


async def resolves_private(host: str, resolver: AbstractResolver | None = None) -> bool | None:
    """True if the host is or resolves to any private address; None if it does not resolve."""
    if is_literal(host):
        return is_private(host)
    try:
        infos = await (resolver or ThreadedResolver()).resolve(host, 0, socket.AF_UNSPEC)
    except (OSError, UnicodeError):
        return None
    return any(is_private(info["host"]) for info in infos)
