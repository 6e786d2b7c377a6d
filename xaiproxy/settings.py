"""Process settings: built-in defaults < TOML config file < XAI_* environment."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO_CONF = Path(__file__).resolve().parent.parent / "conf"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    db: str = "./data/xaiproxy.db"
    config: str = ""
    root_key: str = ""
    prices: str = ""
    plugins: tuple[str, ...] = (
        "keys",
        "config",
        "users",
        "rotation",
        "billing",
        "dashboard",
        "news",
        "alerts",
    )
    max_inflight: int = 2048
    account_max_inflight: int = 64
    client_header_timeout: float = 30.0
    client_body_timeout: float = 60.0
    max_body_bytes: int = 32 * 1024 * 1024
    upstream_connect_timeout: float = 10.0
    upstream_headers_timeout: float = 300.0
    upstream_idle_timeout: float = 120.0
    max_attempts: int = 4
    key_sleep_429: float = 30.0
    key_sleep_auth: float = 600.0
    key_probe_interval: float = 60.0
    forward_headers: tuple[str, ...] = ()  # client headers forwarded beyond the allowlist
    trusted_proxies: tuple[str, ...] = ()
    call_floor: float = 1.0
    default_max_tokens: int = 4096
    anthropic_version: str = "2023-06-01"
    flush_interval: float = 0.2
    shutdown_grace: float = 30.0
    access_log: str = "-"
    metrics: bool = True
    allow_private_providers: bool = False
    # Fernet-style secret for provider keys at rest; empty = stored as given.
    secret_key: str = field(default="", repr=False)

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


class SettingsError(ValueError):
    pass


def _cast(name: str, current, raw):
    """Cast a file or environment value to the type of the default, naming the key on error."""
    try:
        if isinstance(current, bool):
            if isinstance(raw, bool):
                return raw
            if str(raw).strip().lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(current, tuple):
            if isinstance(raw, list | tuple):
                return tuple(str(x) for x in raw)
            return tuple(x for x in str(raw).replace(",", " ").split() if x)
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise SettingsError(
            f"setting {name!r}: cannot use {raw!r} as {type(current).__name__}"
        ) from None


def load(config: str | None = None, env: dict | None = None, **overrides) -> Settings:
    """Build settings from defaults, then the TOML file, then XAI_* env, then explicit overrides."""
    env = os.environ if env is None else env
    base = Settings()
    path = config or env.get("XAI_CONFIG") or ""
    if not path and (REPO_CONF / "xaiproxy.toml").exists():
        path = str(REPO_CONF / "xaiproxy.toml")
    values: dict = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"config file {path}: {exc}") from None
        for key, raw in data.items():
            if key not in Settings.__dataclass_fields__:
                raise SettingsError(f"config file {path}: unknown setting {key!r}")
            values[key] = _cast(key, getattr(base, key), raw)
        values["config"] = path
    for key in Settings.__dataclass_fields__:
        raw = env.get("XAI_" + key.upper())
        if raw is not None and key != "config":
            values[key] = _cast(key, getattr(base, key), raw)
    for key, raw in overrides.items():
        if raw is not None:
            values[key] = _cast(key, getattr(base, key), raw)
    settings = Settings(**values)
    return settings.replace(prices=resolve_prices_path(settings))


def resolve_prices_path(settings: Settings) -> str:
    if not settings.prices:
        return str(REPO_CONF / "prices.toml")
    p = Path(settings.prices)
    if not p.is_absolute() and settings.config:
        p = Path(settings.config).resolve().parent / p
    return str(p)
