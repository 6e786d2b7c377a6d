"""Whitelists (AllowIPs, AllowModels, Resources, AllowLevels): edit rules, validation, compiled matchers.

Stored form: "" = unrestricted, "-*" = nothing allowed (loopback only for IPs),
otherwise the entries joined by single spaces.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable

NOTHING = "-*"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_PATH_RE = re.compile(r"^/[A-Za-z0-9_\-./*{}]*$")


def split(value: str | list) -> list[str]:
    if isinstance(value, list):
        items = [str(v) for v in value]
    else:
        items = str(value).replace(",", " ").split()
    return [i.strip() for i in items if i.strip()]


def apply_edit(current: str, edit: str | list, validate: Callable[[str], None]) -> str:
    """A list sets, `-item` removes one entry, `*` = unrestricted, `-*` = nothing allowed."""
    items = split(edit)
    if not items or items == ["*"]:
        return ""
    if NOTHING in items:
        return NOTHING
    adds = [i for i in items if not i.startswith("-")]
    removes = {i[1:] for i in items if i.startswith("-")}
    for item in adds + sorted(removes):
        validate(item)
    if adds:
        entries = adds
    elif current in ("", NOTHING):
        # Removing from "unrestricted" or "nothing" leaves it as it was.
        return current
    else:
        entries = current.split()
    kept = [e for e in dict.fromkeys(entries) if e not in removes]
    return " ".join(kept) if kept else NOTHING


def validate_ip(item: str) -> None:
    try:
        ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise ValueError(f"{item!r} is not an IP address or CIDR") from None


def validate_glob(item: str) -> None:
    if len(item) > 200 or any(c.isspace() or ord(c) < 32 for c in item):
        raise ValueError(f"{item!r} is not a valid model pattern")


def validate_path(item: str) -> None:
    if not _PATH_RE.match(item) or ".." in item or len(item) > 200:
        raise ValueError(f"{item!r} is not a valid API path (like /v1/chat/completions)")


def validate_level(item: str) -> None:
    if not item.isdigit() or not 0 <= int(item) <= 99:
        raise ValueError(f"{item!r} is not a routing level (a whole number 0-99)")


def compile_levels(stored: str) -> frozenset[int] | None:
    """None = every level; else the levels allowed (none on "-*")."""
    if not stored:
        return None
    return frozenset() if stored == NOTHING else frozenset(int(i) for i in stored.split())


def compile_ips(stored: str) -> tuple | None:
    """None = any address; a tuple of networks otherwise."""
    if not stored:
        return None
    if stored == NOTHING:
        return LOOPBACK
    return tuple(ipaddress.ip_network(i, strict=False) for i in stored.split())


def compile_globs(stored: str) -> Callable[[str], object] | None:
    """None = anything; else a match function (False for everything on "-*")."""
    if not stored:
        return None
    if stored == NOTHING:
        return lambda _value: None
    pattern = "|".join(f"(?:{fnmatch.translate(p)})" for p in stored.split())
    return re.compile(pattern).match


def ip_allowed(networks: tuple | None, ip) -> bool:
    if networks is None:
        return True
    return ip is not None and any(ip in net for net in networks if net.version == ip.version)
