"""Client keys (generated, shown once, stored as SHA-256) and provider keys (masked, optionally encrypted)."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from . import providers

KEY_PREFIX = "sk-Xvs"
KEY_RANDOM_LEN = 45  # 51 characters in all
KEY_RE = re.compile(r"sk-Xvs[A-Za-z0-9_-]{45}")
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")  # an RFC 9110 token
HEADER_VALUE_RE = re.compile(r"[\t\x20-\x7e]{0,4096}")  # no CR, LF or other control bytes
MAX_HEADERS = 32
# What a key's Config may not set: hop-by-hop headers and the ones the gateway computes.
REFUSED_HEADERS = providers.HOP_BY_HOP | {"host", "content-length", "accept-encoding"}


def is_client_key(text: str) -> bool:
    """The format of a client key (a whole match: no trailing newline)."""
    return KEY_RE.fullmatch(text) is not None


def generate_key() -> str:
    # token_urlsafe gives ~1.3 chars per byte; cut to the exact length.
    return KEY_PREFIX + secrets.token_urlsafe(40)[:KEY_RANDOM_LEN]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def display_prefix(key: str) -> str:
    """What lists and logs may show of a client key."""
    return key[:10] + "..." if len(key) > 10 else "sk-..."


def mask(secret: str) -> str:
    """What may be shown of a provider key: never the whole of it."""
    if len(secret) <= 12:
        return secret[:2] + "***"
    return f"{secret[:6]}...{secret[-4:]}"


def scrub(text: bytes, secret: str) -> bytes:
    """`text` without the secret: whole, masked as we show it, or masked the way providers
    quote a key in their errors (its first characters, stars, its last four)."""
    if not secret or len(secret) < 8:
        return text
    raw = secret.encode()
    text = text.replace(raw, b"[redacted]").replace(mask(secret).encode(), b"[redacted]")
    starred = re.escape(raw[:3]) + rb"[\w\-]*\*[\w\-*.]*" + re.escape(raw[-4:])
    return re.sub(starred, b"[redacted]", text)


def check_config(config: dict, current: dict) -> dict:
    """A provider key's Config, checked: `auth` a known style, `headers` tokens -> clean
    values (ValueError says what is wrong). The vendor fields (`deployments`,
    `api_version`, `protocols`) are the vendors' to read.

    A header value sent back exactly as an answer masked it keeps the stored value,
    so a Config read, edited and sent back does not overwrite secrets with masks.
    """
    auth = config.get("auth")
    if auth is not None and auth not in providers.AUTH_STYLES:
        raise ValueError(f"Config.auth must be one of {', '.join(providers.AUTH_STYLES)}")
    headers = config.get("headers", {})
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        raise ValueError(f"Config.headers must be an object of at most {MAX_HEADERS}")
    old = current.get("headers") or {}
    out = {}
    for name, value in headers.items():
        if not HEADER_NAME_RE.fullmatch(name) or name.lower() in REFUSED_HEADERS:
            raise ValueError(f"Config.headers: {name[:40]!r} is not a header name to set")
        if not isinstance(value, str) or not HEADER_VALUE_RE.fullmatch(value):
            raise ValueError(
                f"Config.headers.{name}: a text value without control characters (CR, LF)"
            )
        kept = old.get(name)
        out[name] = kept if kept is not None and value == mask(kept) else value
    return {**config, "headers": out} if "headers" in config else dict(config)


def mask_config(config: dict) -> dict:
    """A key's Config as answers show it: header values masked (they often hold credentials)."""
    headers = config.get("headers")
    if not headers:
        return config
    return {**config, "headers": {k: mask(str(v)) for k, v in headers.items()}}


class SecretBox:
    """Seals provider secrets at rest when XAI_SECRET_KEY is set (Fernet, from `cryptography`).

    The Fernet key is derived from the passphrase with scrypt and a random salt stored
    in the database (`meta.box_salt`). Sealed values read "enc:v2:<token>". Values of
    the first format ("enc:<token>", keyed by a bare SHA-256 of the passphrase) are
    still read; `stale()` tells the start-up code which to seal again.
    """

    PREFIX = "enc:v2:"
    OLD_PREFIX = "enc:"
    SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}

    def __init__(self, passphrase: str, salt: bytes = b"") -> None:
        self._fernet = self._old = None
        self.enabled = bool(passphrase)
        if passphrase:
            from cryptography.fernet import Fernet

            self._old = Fernet(
                base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest())
            )
            if salt:
                key = hashlib.scrypt(passphrase.encode(), salt=salt, **self.SCRYPT)
                self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, secret: str) -> str:
        if not self.enabled:
            return secret
        if self._fernet is None:
            raise RuntimeError("the secret box has no salt yet (it is opened at start)")
        return self.PREFIX + self._fernet.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(self.OLD_PREFIX):
            return stored
        if not self.enabled:
            raise RuntimeError("provider keys are encrypted: set XAI_SECRET_KEY")
        if stored.startswith(self.PREFIX):
            return self._fernet.decrypt(stored[len(self.PREFIX) :].encode()).decode()
        return self._old.decrypt(stored[len(self.OLD_PREFIX) :].encode()).decode()

    def stale(self, stored: str) -> bool:
        """Whether a stored value should be sealed again (plain or the old format)."""
        return self.enabled and not stored.startswith(self.PREFIX)

    # A key's Config may carry credentials in its headers: their values are sealed too.
    def seal_config(self, config: dict) -> dict:
        return _map_headers(config, self.seal)

    def open_config(self, config: dict) -> dict:
        return _map_headers(config, self.open)

    def config_stale(self, config: dict) -> bool:
        return any(self.stale(v) for v in (config.get("headers") or {}).values())


def _map_headers(config: dict, fn) -> dict:
    headers = config.get("headers")
    if not isinstance(headers, dict) or not headers:
        return config
    return {**config, "headers": {k: fn(str(v)) for k, v in headers.items()}}


def client_key(request) -> str:
    """The client's key as sent: `Authorization: Bearer <key>`, else `x-api-key`."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key", "").strip()
