"""Provider vendors, as data: which protocol each speaks, its auth, URL layout and model families.

A provider key's `type` names its vendor (SPEC 13). The relay asks `plan` once per
attempt how this request must go to this key: `None` (the common case) means "as it
came", so an untranslated request to a plain OpenAI/Anthropic-style key costs two dict
lookups and nothing else. Otherwise the plan holds the URL, body, auth style and the
translator of the answer. Vendor code beyond data lives in one module per vendor
(`azure.py`); translation lives in `translate/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from yarl import URL

from . import azure, providers, translate
from .errors import ApiError

OPENAI_FAMILIES = ("gpt*", "o*", "chatgpt*", "text-embedding*", "dall-e*", "whisper*", "tts*")


@dataclass(frozen=True, slots=True)
class Vendor:
    type: str
    speaks: str  # the chat protocol its endpoint speaks: "openai" or "anthropic"
    hosts: tuple[str, ...]  # exact host names; a leading "." matches any subdomain
    families: tuple[str, ...]  # model globs it serves, to extend LEVEL_MAPPER
    auth: str = ""  # providers.AUTH_STYLES name; "" = the request protocol's own
    prefix: str = "/v1"  # what replaces the client's "/v1" in the upstream path
    max_tokens_field: str = "max_tokens"  # the completion cap an OpenAI-shaped body uses
    own_urls: bool = False  # every request needs the vendor's URL layout (prefix or module)


VENDORS: dict[str, Vendor] = {
    v.type: v
    for v in (
        Vendor(
            "openai",
            "openai",
            ("api.openai.com",),
            OPENAI_FAMILIES,
            max_tokens_field="max_completion_tokens",
        ),
        Vendor("anthropic", "anthropic", ("api.anthropic.com",), ("claude*",)),
        Vendor(
            "azure",
            "openai",
            (".openai.azure.com", ".cognitiveservices.azure.com"),
            OPENAI_FAMILIES,
            auth="api-key",
            max_tokens_field="max_completion_tokens",
            own_urls=True,
        ),
        Vendor(
            "gemini",
            "openai",
            ("generativelanguage.googleapis.com",),
            ("gemini*", "gemma*"),
            auth="bearer",
            prefix="/v1beta/openai",
            own_urls=True,
        ),
        Vendor("openai-compatible", "openai", (), ()),
    )
}
TYPES = tuple(VENDORS)
PROTOCOLS = {"openai": providers.OPENAI, "anthropic": providers.ANTHROPIC}
DEFAULT_TYPE = "openai-compatible"
# Model families of well-known OpenAI-compatible hosts (their own domains).
COMPATIBLE_FAMILIES = {
    "deepseek.com": ("deepseek*",),
    "mistral.ai": ("mistral*", "codestral*", "magistral*"),
    "x.ai": ("grok*",),
    "groq.com": ("llama*",),
}


# -- a key's vendor ---------------------------------------------------------------
def _host_matches(host: str, pattern: str) -> bool:
    return host.endswith(pattern) if pattern.startswith(".") else host == pattern


def infer(provider: str) -> str:
    """The vendor type a Provider URL implies; openai-compatible for any other host."""
    host = (urlsplit(provider).hostname or "").lower()
    for vendor in VENDORS.values():
        if any(_host_matches(host, h) for h in vendor.hosts):
            return vendor.type
    return DEFAULT_TYPE


def check_type(value) -> str:
    if value not in VENDORS:
        raise ApiError(
            400,
            "invalid_key_type",
            f"Type {str(value)[:40]!r} is not a known vendor; use one of {', '.join(TYPES)}",
        )
    return value


def families(key_type: str, provider: str) -> tuple[str, ...]:
    """Model globs a key serves (empty: unknown, any model may go to it)."""
    vendor = VENDORS[key_type]
    if vendor.families or key_type != DEFAULT_TYPE:
        return vendor.families
    host = (urlsplit(provider).hostname or "").lower()
    return next(
        (
            pats
            for dom, pats in COMPATIBLE_FAMILIES.items()
            if _host_matches(host, "." + dom) or host == dom
        ),
        (),
    )


def serves(key, model: str) -> bool:
    """Whether `model` can be sent to `key` (for GET /v1/models)."""
    if key.type == "azure" and azure.deployment_of(key.config, model, None):
        return True
    pats = families(key.type, key.provider)
    return not pats or any(fnmatchcase(model, p) for p in pats)


def speaks(key) -> tuple[str, ...]:
    """Protocols the key's host answers natively: its vendor's, plus Config `protocols`."""
    extra = key.config.get("protocols")
    native = VENDORS[key.type].speaks
    return (native, *extra) if isinstance(extra, list) else (native,)


# -- one attempt -------------------------------------------------------------------
@dataclass(slots=True)
class Plan:
    """How one attempt goes to its key when it cannot go as it came."""

    url: URL
    body: bytes | None
    upstream: providers.Protocol  # what the upstream speaks in this attempt
    auth: str  # auth style unless the key's Config names one
    answer: object = None  # translate.Answer for the answer, or None


def plan(ctx, key, base: str, default_max_tokens: int) -> Plan | None:
    """None when the request goes to `key` as it came (the fast path, nothing allocated)."""
    vendor = VENDORS[key.type]
    client = ctx.protocol.name
    if client == vendor.speaks and not vendor.own_urls:
        return None
    if client != vendor.speaks and client not in speaks(key):
        return _translated(ctx, key, vendor, base, default_max_tokens)
    if not vendor.own_urls:
        return None
    url = upstream_url(vendor, key, base, ctx.target, ctx.upstream_model)
    return Plan(url, ctx.body or None, ctx.protocol, vendor.auth)


def upstream_url(vendor: Vendor, key, base: str, raw_path: str, model: str) -> URL:
    """The vendor's URL for a client path `/v1/...` (query kept, except on Azure)."""
    if vendor.type == "azure":
        return azure.url(base, key.config, raw_path, model)
    tail = raw_path[3:] if raw_path.startswith("/v1") else raw_path
    prefix = "" if base.endswith(vendor.prefix) else vendor.prefix
    return URL(base + prefix + tail, encoded=True)


def _translated(ctx, key, vendor: Vendor, base: str, default_max_tokens: int) -> Plan:
    path, body, answer = translate.request_for(
        ctx, vendor.speaks, vendor.max_tokens_field, default_max_tokens
    )
    url = upstream_url(vendor, key, base, path, ctx.upstream_model)
    return Plan(url, body, PROTOCOLS[vendor.speaks], vendor.auth, answer)
