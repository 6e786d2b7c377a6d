"""Request paths and queries as they are checked and as they go upstream (SPEC 5).

The path is normalised before any check (RFC 3986: percent-encoded unreserved
characters decoded, hex in upper case, repeated slashes collapsed); a raw path with
a `.` or `..` segment, an encoded `/` or `\\`, a bad escape or a control byte is
refused, so what is checked is exactly what the upstream receives. Query parameters
that carry a key are dropped before the query goes upstream.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from .errors import ApiError

# A path with none of these is already normal: the fast path does no work.
_SUSPECT = re.compile(r"[%\\\x00-\x1f\x7f]|/\.|//")
_ESCAPE = re.compile(r"%(.{0,2})", re.S)
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_REFUSED_BYTES = frozenset((*range(0x20), 0x7F, ord("/"), ord("\\")))
_SLASHES = re.compile(r"/{2,}")
# Query parameters that hold credentials in some clients (Gemini-style `?key=`…).
KEY_PARAMS = frozenset(
    ("key", "api_key", "api-key", "apikey", "x-api-key", "access_token", "auth_token", "token")
)


class _Bad(ValueError):
    pass


def _escape(m: re.Match) -> str:
    hexa = m.group(1)
    if len(hexa) != 2 or not all(c in "0123456789abcdefABCDEF" for c in hexa):
        raise _Bad
    byte = int(hexa, 16)
    if byte in _REFUSED_BYTES:
        raise _Bad
    return chr(byte) if byte in _UNRESERVED else "%" + hexa.upper()


def normalise(raw_path: str) -> tuple[str, str] | None:
    """(path to check, decoded; path to send, encoded), or None when the path is refused."""
    path = raw_path.partition("?")[0]
    if not _SUSPECT.search(path):
        return path, path
    if any(c < " " or c in "\x7f\\" for c in path):
        return None
    try:
        encoded = _ESCAPE.sub(_escape, path)
    except _Bad:
        return None
    if any(seg in (".", "..") for seg in encoded.split("/")):
        return None
    encoded = _SLASHES.sub("/", encoded)
    return unquote(encoded, errors="replace"), encoded


def invalid_path() -> ApiError:
    return ApiError(
        400,
        "invalid_path",
        "the request path has a '.' or '..' segment, an encoded '/', a bad escape or a control"
        " character; send the plain path, e.g. /v1/chat/completions",
    )


def upstream_query(raw_query: str, client_key: str) -> str:
    """The query minus parameters named like a key or carrying the client's key."""
    if not raw_query:
        return ""
    kept = []
    for part in raw_query.split("&"):
        name, _, value = part.partition("=")
        name_text = unquote(name.replace("+", " ")).strip().lower()
        if name_text in KEY_PARAMS or (client_key and client_key in unquote(value)):
            continue
        kept.append(part)
    return "&".join(kept)
