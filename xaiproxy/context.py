"""The per-request object of the data plane: built once, passed down, queued at the end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

    from .ownerconf import OwnerConfig
    from .providers import Protocol
    from .state import Account, ProviderKey


@dataclass(slots=True, eq=False)
class RequestContext:
    request: web.Request
    request_id: str
    started: float  # perf_counter at arrival
    path: str  # normalised and decoded: what every check sees
    account: Account | None = None
    config: OwnerConfig | None = None
    body: bytes = b""
    payload: Any = None  # parsed JSON body, when it is JSON
    model: str = ""  # as the client asked
    upstream_model: str = ""  # after MODEL_MAPPER (and MODEL_FAILOVER): what is served
    failover: bool = False  # MODEL_FAILOVER replaced the model after every key failed
    stream: bool = False
    strip_usage: bool = False  # we asked for include_usage; the client did not
    level: int = 0
    key: ProviderKey | None = None
    attempts: int = 0
    reserved_n: int = 0
    held: tuple = ()  # the accounts whose HardLimit the reservation counts against
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False
    cost: float = 0.0  # in the account's units
    cost_n: int = 0  # nano base units
    ttfb: float = 0.0  # seconds to the first byte sent to the client
    error: str = ""  # error code when the request failed
    # One (key_id, level, outcome) per upstream attempt; outcome is the HTTP status, or
    # "connect_error" / "timeout" / "refused" (the SSRF rule) / "bad_provider" (a stored
    # provider URL that cannot be used).
    attempt_log: list | None = None
    protocol: Protocol | None = None  # providers.OPENAI / ANTHROPIC, by path
    client_ip: str = ""  # after trusted-proxy X-Forwarded-For, when a whitelist needed it
    prompt_estimate: int = 0  # tokens, from the body size; used when no usage arrives
    copies: int = 1  # images a multipart form asks for (its `n`); JSON's n/best_of: payload
    limits: Any = None  # the ticket gw.limiter.admit gave the request (for charge, headers)
    billed: bool = False
    target: str = ""  # the normalised path and filtered query sent upstream; "" = refused

    plan: Any = None  # vendors.Plan of the current attempt; None when it went as it came
    objects: Any = None  # objects.Plan, on a stateful path (files, batches, ...)

    @property
    def anthropic(self) -> bool:
        """Errors in Anthropic's shape: the request speaks its protocol (/v1/messages)."""
        return self.protocol is not None and self.protocol.anthropic_errors
