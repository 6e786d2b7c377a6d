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


# -- plugin tables: declared as data, written and read through generic ops -----
TYPES = ("int", "float", "text", "bool", "json")  # the portable column types


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a plugin table: `type` is one of TYPES; `null` allows NULL."""

    name: str
    type: str
    null: bool = False
    default: int | float | str | bool | None = None  # None: no default


@dataclass(frozen=True, slots=True)
class Table:
    """A plugin table as data; the backend renders its DDL (create-if-absent)."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    indexes: tuple[tuple[str, ...], ...] = ()  # each: the columns of one index


@dataclass(frozen=True, slots=True)
class AddColumn:
    """A later migration step: a new nullable (or defaulted) column of a plugin table."""

    table: str
    column: Column


@dataclass(frozen=True, slots=True)
class Gt:
    """A filter value: the column is greater than `value`."""

    value: int | float | str


@dataclass(frozen=True, slots=True)
class Le:
    """A filter value: the column is at most `value`."""

    value: int | float | str


@dataclass(frozen=True, slots=True)
class In:
    """A filter value: the column is one of `values`."""

    values: tuple


# `where` maps a column to a value (equal; None: IS NULL) or to Gt / Le / In; all must hold.


@dataclass(frozen=True, slots=True)
class RowInsert:
    table: str
    row: dict


@dataclass(frozen=True, slots=True)
class RowUpsert:
    """Insert, or replace the other columns of the row with the same primary key."""

    table: str
    row: dict


@dataclass(frozen=True, slots=True)
class RowDelete:
    table: str
    where: dict


# -- what reads take ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Scope:
    """Which usage a report covers: everything, a DNA subtree, or a set of accounts."""

    dna: str | None = None
    account_ids: tuple[int, ...] | None = None


ALL = Scope()
