"""Process settings: built-in defaults < TOML config file < XAI_* environment.

With no config file the built-in defaults apply; `conf/xaiproxy.toml` documents them
(a test keeps the two equal) and ships in the package as the template `xaiproxy init`
writes. The price table ships in the package too (`pricing.read("")`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from . import credentials

LIMITERS = ("memory", "redis")  # the `limiter` setting's values (limits.create)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    # A SQLite path; `postgresql://…` is refused until the PostgreSQL store lands (SPEC 12).
    db: str = field(default="./data/xaiproxy.db", repr=False)
    # Redis for the shared hot state of many instances; used by the PostgreSQL backend, coming.
    redis: str = field(default="", repr=False)
    # Where rate-limit buckets live: "memory" (in-process) or "redis" (global, checked with
    # the money in one round trip). Empty: "redis" when `redis` is set, else "memory".
    limiter: str = ""
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
    extra_plugins: tuple[str, ...] = ()  # loaded after `plugins`, without restating them
    max_inflight: int = 2048
    account_max_inflight: int = 64
    client_header_timeout: float = 30.0
    client_body_timeout: float = 60.0
    max_body_bytes: int = 32 * 1024 * 1024
    upstream_connect_timeout: float = 10.0
    upstream_headers_timeout: float = 300.0
    upstream_idle_timeout: float = 120.0
    upstream_proxy: str = ""  # http://[user:pass@]host:port: data-plane egress via CONNECT
    upstream_ca_file: str = ""  # extra CA bundle for providers with a private CA
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
    # Bearer token GET /metrics asks for (its labels name owners and keys); empty = open.
    metrics_token: str = field(default="", repr=False)
    allow_private_providers: bool = False
    # Fernet-style secret for provider keys at rest; empty = stored as given.
    secret_key: str = field(default="", repr=False)
    # Plugin options (plugins.Option): the file's [plugin.<section>] tables, and the
    # XAI_* variables that name no setting above.
    plugin_options: dict = field(default_factory=dict, repr=False, compare=False)
    plugin_env: dict = field(default_factory=dict, repr=False, compare=False)

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


# Not settings of their own: where plugin options are read from (neither file keys nor variables).
PLUGIN_SOURCES = frozenset({"plugin_options", "plugin_env"})


class SettingsError(ValueError):
    pass


def _cast(name: str, current, raw):
    """Cast a file or environment value to the type of the default, naming the key on error."""
    try:
        if isinstance(current, dict):
            if isinstance(raw, dict):
                return raw
            raise ValueError(raw)
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
    values: dict = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"config file {path}: {exc}") from None
        for key, raw in data.items():
            if key == "plugin":  # [plugin.<section>] tables of plugin options
                if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
                    raise SettingsError(f"config file {path}: plugin options go in [plugin.<name>]")
                values["plugin_options"] = raw
                continue
            if key not in Settings.__dataclass_fields__ or key in PLUGIN_SOURCES:
                raise SettingsError(f"config file {path}: unknown setting {key!r}")
            values[key] = _cast(key, getattr(base, key), raw)
        values["config"] = path
    for key in Settings.__dataclass_fields__:
        raw = env.get("XAI_" + key.upper())
        if raw is not None and key != "config" and key not in PLUGIN_SOURCES:
            values[key] = _cast(key, getattr(base, key), raw)
    core = {"XAI_" + key.upper() for key in Settings.__dataclass_fields__}
    values["plugin_env"] = {k: v for k, v in env.items() if k.startswith("XAI_") and k not in core}
    for key, raw in overrides.items():
        if raw is not None:
            values[key] = _cast(key, getattr(base, key), raw)
    settings = Settings(**values)
    _check_db(settings)
    if settings.root_key and not credentials.is_client_key(settings.root_key):
        raise SettingsError(
            "setting 'root_key' (XAI_ROOT_KEY) must be 'sk-Xvs' followed by 45 characters"
            " of A-Z a-z 0-9 - _ (51 in all); unset it to have one generated"
        )
    _check_limiter(settings)
    return settings.replace(prices=resolve_prices_path(settings))


def limiter_name(settings: Settings) -> str:
    """The limiter in use: the `limiter` setting, else "redis" when `redis` is set."""
    return settings.limiter or ("redis" if settings.redis else "memory")


def _check_limiter(settings: Settings) -> None:
    """With `redis` set, the money and the limits are one Redis round trip: limits there."""
    name = limiter_name(settings)
    if name not in LIMITERS:
        raise SettingsError(f"limiter {name!r} is not supported (supported: {', '.join(LIMITERS)})")
    if name == "redis" and not settings.redis:
        raise SettingsError("limiter 'redis' needs the redis setting (XAI_REDIS)")
    if name == "memory" and settings.redis:
        raise SettingsError(
            "limiter 'memory' cannot be used with redis set: the limits are checked in Redis"
            " with the balance (one round trip); leave limiter unset or set it to 'redis'"
        )


def _check_db(settings: Settings) -> None:
    db = settings.db
    scheme = db.split("://", 1)[0].lower() if "://" in db else ""
    if scheme in ("postgresql", "postgres"):
        if not settings.redis:
            raise SettingsError(
                f"db {mask_url(db)}: PostgreSQL (many instances) needs the 'redis' setting"
                " (XAI_REDIS) for the state they share; set both (docs/SCALING.md)"
            )
    elif scheme not in ("", "sqlite"):
        raise SettingsError(
            f"db {mask_url(db)}: not a supported database (a SQLite file path, or a"
            " postgresql:// URL with the 'redis' setting)"
        )


_SECRET_PARAMS = {"password", "passwd", "pass", "sslpassword"}
_USERINFO_RE = re.compile(r"(://[^:/@\s]*:)[^/\s]*@")


def mask_url(url: str) -> str:
    """A database or Redis URL fit to print: its password (in the userinfo or a
    `password=` query parameter) replaced by ****. Anything else is returned as given."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:****@{netloc.rsplit('@', 1)[1]}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
                pairs = [(k, "****" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs]
                query = urlencode(pairs, safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not parseable (a bad port, a broken IPv6 literal): mask by pattern
        return _USERINFO_RE.sub(r"\1****@", url)


def packaged(name: str) -> Traversable:
    """A file shipped in the package's conf/ (the repository's conf/, installed)."""
    return resources.files(__package__).joinpath("conf", name)


def resolve_prices_path(settings: Settings) -> str:
    """The price table file named by the settings, absolute; "" = the shipped table."""
    if not settings.prices:
        return ""
    p = Path(settings.prices)
    if not p.is_absolute() and settings.config:
        p = Path(settings.config).resolve().parent / p
    return str(p.absolute())
