"""OpenAI vs Anthropic, as data: auth headers, usage field names, error events, path rules.

The handler never branches on the provider: it picks a `Protocol` once per request
(by path) and reads what it needs from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from . import errors

# Headers that describe one hop, never forwarded either way (RFC 9110 7.6.1), plus the
# ones the gateway sets itself.
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)
# Client headers that may go upstream (SPEC 5); any other stays here: credentials,
# cookies, forwarding headers, OpenAI-Organization/-Project (the key's Config sets those).
FORWARD_REQUEST = frozenset(
    (
        "content-type",
        "accept",
        "accept-language",
        "user-agent",
        "anthropic-version",
        "anthropic-beta",
        "openai-beta",
    )
)
FORWARD_REQUEST_PREFIXES = ("x-stainless-",)
# Never forwarded, whatever the operator's `forward_headers` say.
NEVER_FORWARD = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "accept-encoding",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "openai-organization",
    "openai-project",
}
# Never sent back: the provider's own ids, limits and cookies describe our key, not the client.
DROP_RESPONSE = HOP_BY_HOP | {
    "set-cookie",
    "x-request-id",
    "request-id",
    "openai-organization",
    "openai-project",
    "anthropic-organization-id",
    "date",
    "server",
}
DROP_RESPONSE_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")

# Endpoints that cannot work without a model; elsewhere a missing one takes the default.
MODEL_REQUIRED = frozenset(
    (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/audio/speech",
    )
)
DEFAULT_MODELS = {
    "/v1/moderations": "omni-moderation-latest",
    "/v1/images/generations": "dall-e-2",
    "/v1/images/edits": "dall-e-2",
    "/v1/images/variations": "dall-e-2",
}
# Streams where the gateway asks for usage (stream_options.include_usage) itself.
INCLUDE_USAGE_PATHS = frozenset(("/v1/chat/completions",))
# Request fields that cap the completion, in the order we look for them.
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# Request fields that multiply the answers one request is billed for (choices, images).
COPIES_FIELDS = ("n", "best_of")


@dataclass(frozen=True, slots=True)
class UsageFields:
    """Where a usage object keeps each count; `prompt_excludes_cache` = add cache counts."""

    prompt: tuple[str, ...]
    completion: tuple[str, ...]
    cached: tuple[tuple[str, ...], ...]  # paths into the usage object
    cache_write: tuple[tuple[str, ...], ...]
    prompt_excludes_cache: bool
    containers: tuple[str, ...]  # event objects that wrap the usage (message, response)


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str
    auth_header: str
    auth_prefix: str
    version_header: str  # "" when the protocol has none
    usage: UsageFields
    anthropic_errors: bool  # error bodies carry the top-level "type": "error"

    def error_event(self, status: int, code: str, message: str) -> bytes:
        """A well-formed SSE event that ends a broken stream."""
        err = {"message": message, "type": errors.TYPES.get(status, "api_error"), "code": code}
        if self.anthropic_errors:
            data = orjson.dumps({"type": "error", "error": err})
            return b"event: error\ndata: " + data + b"\n\n"
        return b"data: " + orjson.dumps({"error": err}) + b"\n\n"


OPENAI = Protocol(
    name="openai",
    auth_header="Authorization",
    auth_prefix="Bearer ",
    version_header="",
    usage=UsageFields(
        prompt=("prompt_tokens", "input_tokens"),
        completion=("completion_tokens", "output_tokens"),
        cached=(
            ("prompt_tokens_details", "cached_tokens"),
            ("input_tokens_details", "cached_tokens"),
        ),
        cache_write=(),
        prompt_excludes_cache=False,
        containers=("response",),
    ),
    anthropic_errors=False,
)
ANTHROPIC = Protocol(
    name="anthropic",
    auth_header="x-api-key",
    auth_prefix="",
    version_header="anthropic-version",
    usage=UsageFields(
        prompt=("input_tokens",),
        completion=("output_tokens",),
        cached=(("cache_read_input_tokens",),),
        cache_write=(("cache_creation_input_tokens",),),
        prompt_excludes_cache=True,
        containers=("message",),
    ),
    anthropic_errors=True,
)
AUTH_STYLES = {
    "bearer": ("Authorization", "Bearer "),
    "x-api-key": ("x-api-key", ""),
    "api-key": ("api-key", ""),  # Azure OpenAI
}


def forwarding(extra: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
    """(names, prefixes) of client headers to forward: the allowlist plus the operator's
    `forward_headers` (names; a trailing `*` makes a prefix)."""
    extra = tuple(h.strip().lower() for h in extra if h.strip())
    names = FORWARD_REQUEST | {h for h in extra if not h.endswith("*")}
    prefixes = FORWARD_REQUEST_PREFIXES + tuple(h[:-1] for h in extra if h.endswith("*"))
    return frozenset(names - NEVER_FORWARD), prefixes


def for_path(path: str) -> Protocol:
    return ANTHROPIC if path.startswith("/v1/messages") else OPENAI


def auth_headers(
    protocol: Protocol,
    secret: str,
    config: dict,
    client_version: str | None,
    default_version: str,
    style: str = "",
) -> dict[str, str]:
    """Upstream auth for one key: the key's Config style, else the vendor's (`style`), else
    the protocol's own."""
    header, prefix = AUTH_STYLES.get(
        config.get("auth", "") or style, (protocol.auth_header, protocol.auth_prefix)
    )
    out = {header: prefix + secret}
    if protocol.version_header:
        out[protocol.version_header] = client_version or default_version
    extra = config.get("headers")
    if isinstance(extra, dict):
        out.update({str(k): str(v) for k, v in extra.items()})
    return out


MAX_TOKENS_COUNT = 2**40  # larger (or negative, float, bool, text) counts are bad input


class BadUsage(ValueError):
    """The upstream's usage holds a count that is not an integer in [0, MAX_TOKENS_COUNT]."""


def _count(value) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS_COUNT:
        return value
    raise BadUsage(f"usage count {str(value)[:40]!r} is out of range")


def _dig(obj: dict, path: tuple[str, ...]) -> int:
    for name in path:
        if not isinstance(obj, dict):
            return 0
        obj = obj.get(name)
    return _count(obj)


def _first(obj: dict, names: tuple[str, ...]) -> int:
    for name in names:
        value = obj.get(name)
        if value is not None:
            return _count(value)
    return 0


def normalize_usage(fields: UsageFields, usage: dict) -> tuple[int, int, int, int] | None:
    """(prompt incl. cached, completion, cache read, cache write), as pricing.cost_usd expects.

    None when any count is bad input (SPEC 5): the caller then estimates instead.
    """
    try:
        cached = sum(_dig(usage, p) for p in fields.cached)
        cache_write = sum(_dig(usage, p) for p in fields.cache_write)
        prompt = _first(usage, fields.prompt)
        completion = _first(usage, fields.completion)
    except BadUsage:
        return None
    if fields.prompt_excludes_cache:
        prompt += cached + cache_write
    return prompt, completion, cached, cache_write
