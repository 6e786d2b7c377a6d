"""The header lines of an upstream request, as the bytes the pool sends.

Client headers are filtered on aiohttp's raw bytes (never decoded, never copied into a
multidict). A key's own lines (its auth header, the version header, its Config headers,
`Accept-Encoding: identity`) are built once and reused until the key changes: a new
secret, Config or `updated_at` builds them again.
"""

from __future__ import annotations

from multidict import CIMultiDict

from . import providers

CACHE_MAX = 4096  # (key, protocol, auth style, version) entries; cleared when full


class Heads:
    def __init__(self, settings) -> None:
        names, prefixes = providers.forwarding(settings.forward_headers)
        self.names = frozenset(n.encode() for n in names)
        self.prefixes = tuple(p.encode() for p in prefixes)
        self.never = frozenset(n.encode() for n in providers.NEVER_FORWARD)
        self.anthropic_version = settings.anthropic_version
        self._keys: dict[tuple, tuple] = {}

    def block(self, ctx, key) -> bytes:
        """Client headers from the allowlist (never one its Connection header names, nor one
        the key sets itself), then the key's lines."""
        request, protocol, plan = ctx.request, ctx.protocol, ctx.plan
        version = request.headers.get(protocol.version_header) if protocol.version_header else None
        upstream, style = (plan.upstream, plan.auth) if plan is not None else (protocol, "")
        taken, own = self.key_lines(key, upstream, style, version)
        names, prefixes, never = self.names, self.prefixes, self.never
        hop = None
        out = []
        for name, value in request.raw_headers:
            low = name.lower()
            if (low in names or (low.startswith(prefixes) and low not in never)) and (
                low not in taken
            ):
                if hop is None:
                    hop = _hop_by_hop(request)
                if low not in hop:
                    out.append(b"%s: %s\r\n" % (name, value))
        out.append(own)
        return b"".join(out)

    def key_lines(self, key, protocol, style: str, version: str | None) -> tuple[frozenset, bytes]:
        """(lower-case names, header lines) the key sets on every request it serves."""
        ident = (key.id, protocol.name, style, version)
        hit = self._keys.get(ident)
        if (
            hit is not None
            and hit[0] is key
            and hit[1] is key.secret
            and hit[2] is key.config
            and hit[3] == key.updated_at
        ):
            return hit[4], hit[5]
        headers = CIMultiDict(
            providers.auth_headers(
                protocol, key.secret, key.config, version, self.anthropic_version, style
            )
        )
        headers["Accept-Encoding"] = "identity"  # the scanner must read usage
        taken = frozenset(n.lower().encode("latin-1", "replace") for n in headers)
        lines = header_lines(headers)
        if len(self._keys) >= CACHE_MAX:
            self._keys.clear()
        self._keys[ident] = (key, key.secret, key.config, key.updated_at, taken, lines)
        return taken, lines


def header_lines(headers) -> bytes:
    """`Name: value` lines; a line with CR or LF is dropped, never sent."""
    lines = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            continue
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1", "replace")


def _hop_by_hop(request) -> frozenset[bytes]:
    """The names the client's Connection header lists: they describe its hop only."""
    listed = request.headers.get("Connection", "")
    return frozenset(t.strip().lower().encode("latin-1", "replace") for t in listed.split(","))
