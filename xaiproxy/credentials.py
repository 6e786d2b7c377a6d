"""Client keys (generated, shown once, stored as SHA-256) and provider keys (masked, optionally encrypted)."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

KEY_PREFIX = "sk-Xvs"
KEY_RANDOM_LEN = 45  # 51 characters in all


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


class SecretBox:
    """Encrypts provider keys at rest when XAI_SECRET_KEY is set (Fernet, from `cryptography`)."""

    PREFIX = "enc:"

    def __init__(self, passphrase: str) -> None:
        self._fernet = None
        if passphrase:
            from cryptography.fernet import Fernet

            digest = hashlib.sha256(passphrase.encode()).digest()
            self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, secret: str) -> str:
        if self._fernet is None:
            return secret
        return self.PREFIX + self._fernet.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(self.PREFIX):
            return stored
        if self._fernet is None:
            raise RuntimeError("provider keys are encrypted: set XAI_SECRET_KEY")
        return self._fernet.decrypt(stored[len(self.PREFIX) :].encode()).decode()
