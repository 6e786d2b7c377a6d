"""Owner configuration (/x-config): parsing, validation, defaults and compiled form.

Values are stored normalized (JSON) per owner. A batch is validated whole before
anything changes; the data plane reads the compiled `OwnerConfig` only.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import whitelists
from .globs import GlobTable
from .pricing import FIELDS as PRICE_FIELDS
from .pricing import Prices

LIMIT_FIELDS = ("rpm", "rph", "rpd", "tpm", "tph", "tpd")
NUMBER_DEFAULTS = {"USER_MIN_BALANCE": 2.0, "USER_API_BALANCE": 20.0, "LOW_BALANCE": 3.0}
EMAIL_KEYS = ("XAI_MAIL", "EMAIL_SMTP", "EMAIL_PORT", "EMAIL_AUTH", "EMAIL_PASS", "EMAIL_TLS")
SECRET_KEYS = ("EMAIL_PASS",)
MAIL_PORTS = (25, 465, 587, 2525)  # what a non-root owner's EMAIL_PORT may be
_HOST_RE = re.compile(r"[A-Za-z0-9.:\-]{1,253}")  # a name, IPv4 or IPv6 (no brackets)
KEYS = (
    "MODEL_MAPPER",
    "LEVEL_MAPPER",
    "SWITCH_OVER",
    "RESOURCES",
    "MODEL_LIMITS",
    "PRICING",
    "LOCK_USER_MAPPER",
    "MODEL_FAILOVER",
    *EMAIL_KEYS,
    *NUMBER_DEFAULTS,
)
_MODEL_RE = re.compile(r"[A-Za-z0-9_.:/@*?\[\]\-]{1,200}")
MAX_ENTRIES = 1000  # per mapper, MODEL_LIMITS, PRICING or RESOURCES


def _pairs(raw: Any, key: str) -> list[tuple[str, str]]:
    if isinstance(raw, dict):
        return [(str(k).strip(), str(v).strip()) for k, v in raw.items()]
    if not isinstance(raw, str):
        raise ValueError(f"{key} takes 'a=b, c=d' pairs or an object")
    out = []
    for item in raw.split(","):
        if not item.strip():
            continue
        if item.count("=") != 1:
            raise ValueError(f"{key}: {item.strip()!r} is not a k=v pair")
        k, v = (s.strip() for s in item.split("="))
        if not k or not v:
            raise ValueError(f"{key}: {item.strip()!r} has an empty side")
        out.append((k, v))
    return out


def _bounded(items, key: str):
    if len(items) > MAX_ENTRIES:
        raise ValueError(f"{key} has {len(items)} entries; at most {MAX_ENTRIES} are allowed")
    return items


def _model(name: str, key: str) -> str:
    if not _MODEL_RE.fullmatch(name):
        raise ValueError(
            f"{key}: {name[:100]!r} is not a model name or pattern (at most 200 characters)"
        )
    return name


def _level(value: str, key: str) -> int:
    if not str(value).isdigit() or not 0 <= int(value) <= 99:
        raise ValueError(f"{key}: level {value!r} must be a whole number 0-99")
    return int(value)


def _json_object(raw: Any, key: str) -> dict:
    if isinstance(raw, str):
        if raw.strip() in ("*", "="):
            return {"*": None}  # reset marker
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ValueError(f"{key} must be a JSON object (string or object)") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{key} must be a JSON object")
    return _bounded(raw, key)


def _numbers(entry: Any, allowed: tuple, key: str, model: str, integer: bool) -> dict:
    if not isinstance(entry, dict):
        raise ValueError(f"{key}[{model!r}] must be an object like {{{allowed[0]!r}: 10}}")
    out = {}
    for name, value in entry.items():
        if name not in allowed:
            raise ValueError(f"{key}[{model!r}]: unknown field {name!r} (use {', '.join(allowed)})")
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0 or value > 1e12:
            raise ValueError(f"{key}[{model!r}].{name} must be a number >= 0")
        out[name] = int(value) if integer else float(value)
    return out


def _merge_models(raw, current, key, allowed, integer) -> dict:
    """MODEL_LIMITS / PRICING: objects merge into what is there; '*' or '=' resets."""
    obj = _json_object(raw, key)
    if obj == {"*": None}:
        return {}
    merged = dict(current or {})
    for model, entry in obj.items():
        model = _model(str(model), key)
        if entry is None:
            merged.pop(model, None)
        else:
            merged[model] = _numbers(entry, allowed, key, model, integer)
    return _bounded(merged, key)


def normalize(key: str, raw: Any, current: Any = None) -> Any:
    """Validate one key's new value; return its stored form. ValueError says what is wrong."""
    if key in ("MODEL_MAPPER", "MODEL_FAILOVER"):
        return {_model(k, key): _model(v, key) for k, v in _bounded(_pairs(raw, key), key)}
    if key == "LEVEL_MAPPER":
        return {_model(k, key): _level(v, key) for k, v in _bounded(_pairs(raw, key), key)}
    if key == "SWITCH_OVER":
        out = {str(_level(k, key)): _level(v, key) for k, v in _bounded(_pairs(raw, key), key)}
        for k, v in out.items():
            if int(k) == v:
                raise ValueError(f"SWITCH_OVER: level {k} cannot switch over to itself")
        return out
    if key == "RESOURCES":
        items = list(raw) if isinstance(raw, dict) else whitelists.split(raw)
        for item in _bounded(items, key):
            whitelists.validate_path(item)
        return {p: {} for p in items}
    if key == "MODEL_LIMITS":
        return _merge_models(raw, current, key, LIMIT_FIELDS, True)
    if key == "PRICING":
        return _merge_models(raw, current, key, PRICE_FIELDS, False)
    if key == "LOCK_USER_MAPPER":
        return flag(raw, key)
    if key in NUMBER_DEFAULTS:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number") from None
        if isinstance(raw, bool) or not math.isfinite(value) or not 0 <= value <= 1e9:
            raise ValueError(f"{key} must be a number from 0 to 1e9")
        return value
    if key == "EMAIL_PORT":
        if not re.fullmatch(r"[0-9]{1,5}", str(raw)) or not 0 < int(raw) < 65536:
            raise ValueError("EMAIL_PORT must be a port number 1-65535")
        return int(raw)
    if key == "EMAIL_SMTP":
        host = str(raw).strip()
        if host and not _HOST_RE.fullmatch(host):
            raise ValueError("EMAIL_SMTP must be a host name or address (no scheme, no port)")
        return host
    if key == "EMAIL_TLS":
        text = str(raw).strip().lower()
        if text not in ("true", "false", "1", "0", "starttls", "tls", "none", ""):
            raise ValueError("EMAIL_TLS takes true (implicit TLS), starttls or false")
        return _tls(text)
    if key in EMAIL_KEYS:
        if not isinstance(raw, str | int) or len(str(raw)) > 512:
            raise ValueError(f"{key} must be a string of at most 512 characters")
        return str(raw).strip()
    raise ValueError(f"unknown config key {key!r}; known keys: {', '.join(KEYS)}")


def flag(raw: Any, key: str) -> bool:
    text = str(raw).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise ValueError(f"{key} takes true or false")
    return text in ("true", "1")


def _tls(text: str) -> bool | str:
    """EMAIL_TLS in its natural type: true (implicit TLS), false, or "starttls"."""
    if text == "starttls":
        return text
    return text in ("true", "1", "tls")


def apply_batch(values: dict, body: dict) -> dict:
    """The whole new value set, or ValueError naming the first bad key; `values` is untouched."""
    if not isinstance(body, dict) or not body:
        raise ValueError("send a JSON object of config keys to set")
    new = dict(values)
    for key, raw in body.items():
        new[key] = normalize(key, raw, values.get(key))
    return new


def glob_list(mapping: dict) -> list[tuple[Any, str, Any]]:
    """A mapper's (match, pattern, target) rules, in order: the first match wins."""
    return [(re.compile(fnmatch.translate(k)).match, k, v) for k, v in mapping.items()]


@dataclass(slots=True)
class OwnerConfig:
    owner_id: int
    version: int = 0
    values: dict = field(default_factory=dict)
    prices: Prices | None = None
    model_mapper: GlobTable = field(default_factory=lambda: GlobTable(()))
    level_mapper: GlobTable = field(default_factory=lambda: GlobTable(()))
    switch_over: dict = field(default_factory=dict)
    resource_match: Any = None
    model_limits: GlobTable = field(default_factory=lambda: GlobTable((), exact_first=True))
    lock_user_mapper: bool = False  # accounts' own ModelMapper/LevelMapper are ignored
    model_failover: GlobTable = field(default_factory=lambda: GlobTable(()))

    @classmethod
    def build(cls, owner_id: int, version: int, values: dict, base_prices: Prices) -> OwnerConfig:
        resources = values.get("RESOURCES") or {}
        return cls(
            owner_id=owner_id,
            version=version,
            values=values,
            prices=base_prices.overlay(values.get("PRICING") or {}),
            model_mapper=GlobTable((values.get("MODEL_MAPPER") or {}).items()),
            level_mapper=GlobTable((values.get("LEVEL_MAPPER") or {}).items()),
            lock_user_mapper=bool(values.get("LOCK_USER_MAPPER")),
            model_failover=GlobTable((values.get("MODEL_FAILOVER") or {}).items()),
            switch_over={int(k): int(v) for k, v in (values.get("SWITCH_OVER") or {}).items()},
            resource_match=whitelists.compile_globs(" ".join(resources)),
            model_limits=GlobTable((values.get("MODEL_LIMITS") or {}).items(), exact_first=True),
        )

    def number(self, key: str) -> float:
        return float(self.values.get(key, NUMBER_DEFAULTS[key]))

    def map_model(self, model: str) -> str:
        return self.model_mapper.value(model, model)

    def failover_of(self, model: str) -> str:
        """MODEL_FAILOVER's model for one whose every key failed; "" when none."""
        return self.model_failover.value(model, "")

    def level_of(self, model: str) -> int:
        return self.level_mapper.value(model, 1)

    def public(self) -> dict:
        """What GET /x-config shows: everything but secrets, in natural types."""
        out = {k: ("********" if k in SECRET_KEYS else v) for k, v in self.values.items()}
        if isinstance(out.get("EMAIL_TLS"), str):  # stored as text before it was a boolean
            out["EMAIL_TLS"] = _tls(out["EMAIL_TLS"])
        return out
