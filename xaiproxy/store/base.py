"""The store seam: what every backend does. The core and the plugins see only this.

Writes are units of typed ops (`store/ops.py`), applied all or nothing by one batched
writer; reads are named operations returning plain values (dicts and tuples). A
backend renders ops into its own SQL; `tests/store/` is the contract it must pass.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .ops import Scope, UsageRecord


class Store(Protocol):
    queue_depth: int
    last_flush_seconds: float
    flushes: int
    write_errors: int
    closed: bool

    # -- lifecycle ---------------------------------------------------------
    async def open(self) -> None:
        """Connect, bring the schema up to date, start the writer."""

    async def close(self) -> None:
        """Commit everything queued, then disconnect."""

    # -- writing -----------------------------------------------------------
    def submit(self, ops: list, wait: bool = False) -> asyncio.Future | None:
        """Queue one unit; with wait, a future for its commit (no wait: the data plane)."""

    async def write(self, ops: list) -> None:
        """Queue a unit and wait until it is committed (management calls)."""

    def submit_usage(self, record: UsageRecord, ops: list) -> None:
        """Queue a usage record and its spend's ops for the next group commit."""

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""

    # -- start-up reads ------------------------------------------------------
    async def count_accounts(self) -> int: ...
    async def load_accounts(self) -> list[dict]: ...
    async def load_grants(self, now: float) -> list[dict]: ...
    async def load_keys(self) -> list[dict]: ...
    async def load_configs(self) -> tuple[dict[int, int], dict[int, dict[str, str]]]: ...
    async def spend_since(self, day: int) -> list[tuple[int, int]]: ...
    async def spend_by_dna_since(self, day: int) -> list[tuple[str, int]]: ...
    async def max_ids(self) -> dict[str, int]: ...

    # -- reloads of one thing (instances following each other's changes, SPEC 12) ----
    async def load_account(self, account_id: int) -> dict | None:
        """One account row as `load_accounts` gives it; None when it does not exist."""

    async def load_account_grants(self, account_id: int, now: float) -> list[dict]:
        """One account's grants as `load_grants` gives them, soonest expiry first."""

    async def load_key(self, key_id: int) -> dict | None:
        """One provider key row as `load_keys` gives it; None when it does not exist."""

    async def load_config(self, owner_id: int) -> tuple[int, dict[str, str]]:
        """One owner's (version, {key: JSON text}); (0, {}) when it has none."""

    async def id_block(self, table: str) -> tuple[int, int]:
        """A block of fresh ids (first, last) for `table` that no other instance sharing
        this database is ever given; above every id the table has used."""

    # -- management reads ------------------------------------------------------
    async def audit_totals(self) -> dict[str, int]: ...
    async def usage_by_day(self, scope: Scope, first: int, end: int) -> list[tuple]: ...
    async def usage_by_account(self, scope: Scope, first: int, end: int) -> list[tuple]: ...
    async def usage_totals(self, account_id: int, first: int) -> tuple: ...
    async def usage_grouped(
        self, scope: Scope, first: int | None, last: int | None, by: tuple[str, ...]
    ) -> list[tuple]:
        """(*group values, requests, prompt, completion, cached, cost_n) per group of `by`
        (any of "day", "model", "account_id"), ordered by it; days [first, last], None = open."""

    async def migrate_plugin(self, name: str, steps: list) -> list[int]:
        """Declare a plugin's tables (steps of `ops.Table` / `ops.AddColumn`) and apply the
        steps past its recorded version, each one unit, creating tables only if absent;
        returns the versions applied."""

    async def op_logs(
        self, account_id: int, actions: tuple[str, ...], filters: dict, limit: int, offset: int
    ) -> tuple[int, list[dict]]: ...
    async def idempotency_get(self, account_id: int, key: str, since: float) -> dict | None: ...
    async def meta_get(self, key: str) -> str | None: ...
    async def load_objects(self) -> list[tuple]: ...

    # -- plugin tables (declared by migrate_plugin; written with ops.Row*) --------
    async def rows(
        self, table: str, where: dict | None = None, order: tuple = (), limit: int | None = None
    ) -> list[dict]:
        """Matching rows as dicts; `where` maps a column to a value (None: NULL) or to
        `ops.Gt` / `ops.Le` / `ops.In`; `order` names columns, `-col` descending."""

    async def count_rows(self, table: str, where: dict | None = None) -> int: ...
