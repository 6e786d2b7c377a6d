"""Typed store operations: what a change persists, with no SQL in it.

The core and the plugins build these; a backend (`store/sqlite.py`, later others)
renders each into its own statements. A unit is a list of ops applied all or nothing.
Money columns ending in `_n` are integers in nano base units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class UsageRecord(NamedTuple):
    """One billed request. The field names are the `usage` columns, in order."""

    ts: float
    account_id: int
    owner_id: int
    dna: str
    model: str
    upstream_model: str
    level: int
    key_id: int
    path: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: float
    cost_n: int
    status: int
    latency_ms: float
    estimated: int
    request_id: str
    failover: int = 0  # 1: served by MODEL_FAILOVER's model after every key failed


# -- accounts ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AccountPut:
    """A new account: every stored column (`Account.row()`)."""

    row: dict


@dataclass(frozen=True, slots=True)
class AccountSet:
    """Some columns of one account."""

    id: int
    fields: dict


@dataclass(frozen=True, slots=True)
class AccountMove:
    """An account's new place in the tree; its usage records follow the new DNA."""

    id: int
    parent_id: int | None
    dna: str
    level: int


@dataclass(frozen=True, slots=True)
class AccountDelete:
    id: int


# -- money -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GrantPut:
    id: int
    account_id: int
    amount_n: int
    remaining_n: int
    granted_at: float
    expires_at: float
    reference: str = ""


@dataclass(frozen=True, slots=True)
class GrantDelta:
    """Take `take_n` from a grant's remainder (negative gives back). Deltas commute."""

    grant_id: int
    take_n: int


@dataclass(frozen=True, slots=True)
class Transfer:
    """A journal line of a money movement between accounts."""

    ts: float
    from_id: int
    to_id: int
    amount_n: int
    fee_n: int
    kind: str
    operator_id: int


# -- provider keys -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KeyPut:
    """A provider key inserted or replaced whole; `row` holds the sealed secret."""

    row: dict


@dataclass(frozen=True, slots=True)
class KeySet:
    """Some columns of an existing provider key (never recreates a deleted one)."""

    id: int
    fields: dict


@dataclass(frozen=True, slots=True)
class KeySleep:
    id: int
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class KeyDelete:
    id: int


# -- configuration, logs, idempotency -----------------------------------------
@dataclass(frozen=True, slots=True)
class ConfigSet:
    """An owner's whole config (JSON text per key) and its new version."""

    owner_id: int
    version: int
    values: dict[str, str]


@dataclass(frozen=True, slots=True)
class OpLog:
    ts: float
    operator_id: int
    target_id: int
    action: str
    details: str
    status: str = "success"


@dataclass(frozen=True, slots=True)
class IdempotencyPut:
    account_id: int
    key: str
    fingerprint: str
    status: int
    response: bytes
    created_at: float


@dataclass(frozen=True, slots=True)
class IdempotencyPrune:
    before: float


# -- the database itself and provider objects -----------------------------------
@dataclass(frozen=True, slots=True)
class MetaPut:
    """A small fact about the database (the secret box's salt)."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class ObjectPut:
    """A stateful provider object made through the gateway; the first maker keeps it."""

    owner_id: int
    object_id: str
    account_id: int
    dna: str
    created_at: float


# -- news and alerts (tables of the built-in plugins) --------------------------
@dataclass(frozen=True, slots=True)
class NewsPut:
    id: int
    author_id: int
    target_id: int | None  # None with target_dna None = system news
    target_dna: str | None
    title: str
    content: str
    created_at: float
    expires_at: float
    max_live: int = 0  # > 0: written only while the author has fewer unexpired items


@dataclass(frozen=True, slots=True)
class NewsDelete:
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NewsPrune:
    before: float


@dataclass(frozen=True, slots=True)
class AlertSent:
    account_id: int
    kind: str
    period: str
    sent_at: float


@dataclass(frozen=True, slots=True)
class AlertClear:
    account_id: int
    kind: str


# -- what reads take ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Scope:
    """Which usage a report covers: everything, a DNA subtree, or a set of accounts."""

    dna: str | None = None
    account_ids: tuple[int, ...] | None = None


ALL = Scope()


@dataclass(frozen=True, slots=True)
class NewsMatch:
    """Which news a delete removes: system news, or one author's for a target."""

    author_id: int | None = None  # None = system news
    target_id: int | None = None
    target_dna: str | None = None
