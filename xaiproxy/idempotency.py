"""The Idempotency-Key header for money movements.

A management call that moves money may carry `Idempotency-Key`. The first call
with a key runs and its answer is recorded in the SAME store unit as the movement,
so a crash can never keep one without the other. A later call with the same key:

- and the same request (method, path, body) replays the recorded answer and
  applies nothing (header `Idempotent-Replayed: true`);
- and a different request is refused with 409 `idempotency_conflict`.

Concurrent duplicates never both apply: while a key is in flight, a second call
with it waits for the first to finish and then replays (or conflicts). Across
instances (SPEC 12) the key is also locked in Redis while it runs: a second instance
waits up to `WAIT` seconds for the first's recorded answer, else answers 409
`idempotency_in_progress`. Records are unique per (account, key) in the database,
the last line of defence: a second unit with the key fails, and its caller replays
the first one's answer.
Only successful answers are recorded: a refused call changed nothing and may be
retried with the same key. Keys are scoped to the calling account and kept for
`TTL` seconds: records past it are pruned at start and then at most every
`PRUNE_EVERY` seconds, by the first keyed call after that. A recorded answer never
holds a client secret (see `redact`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from . import changes, responses
from .errors import ApiError
from .hotstate import StateUnavailable
from .store import ops as o

HEADER = "Idempotency-Key"
TTL = 24 * 3600.0
PRUNE_EVERY = 3600.0
LOCK_TTL = 60.0  # a lock outlives any unit's commit; it expires if its instance dies
WAIT = 20.0  # how long a duplicate waits for the first instance's answer
_KEY_RE = re.compile(r"[\x21-\x7e]{1,200}")

# work() -> (answer, ops, status): checks and mutates memory synchronously, returns
# the store ops of its unit; it must not await (that is what makes it atomic).
Work = Callable[[], tuple[Any, list, int]]


def fingerprint(request: web.Request, body: Any) -> str:
    """What makes two requests "the same": method, path and the body, keys sorted."""
    canon = orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    head = f"{request.method} {request.rel_url.raw_path}\n".encode()
    return hashlib.sha256(head + canon).hexdigest()


def redact(answer: Any) -> Any:
    """The answer as it may be stored: a freshly shown SecretKey is never kept."""
    if isinstance(answer, dict):
        return {
            k: ("(shown once; not replayed)" if k == "SecretKey" else redact(v))
            for k, v in answer.items()
        }
    if isinstance(answer, list):
        return [redact(v) for v in answer]
    return answer


class Guard:
    """Runs money movements so that an Idempotency-Key applies them at most once."""

    def __init__(self, gw) -> None:
        self.gw = gw  # gw.sync (set at start when instances share the database)
        self.store = gw.store
        self.state = gw.state
        self.inflight: dict[tuple[int, str], asyncio.Future] = {}
        self.pruned_at = 0.0

    async def run(self, request: web.Request, account_id: int, body: Any, work: Work):
        """Apply work() and persist its unit; replay or refuse when the key was used."""
        key = request.headers.get(HEADER)
        if key is None:
            answer, ops, status = await self._apply(work, lambda _answer, _status: [])
            return responses.json(answer, status)
        if not _KEY_RE.fullmatch(key):
            raise ApiError(
                400,
                "invalid_idempotency_key",
                f"{HEADER} must be 1-200 printable ASCII characters without spaces",
            )
        if time.time() - self.pruned_at > PRUNE_EVERY:
            self.pruned_at = time.time()
            self.store.submit([_prune_op()])  # the table only grows with keyed calls
        slot = (account_id, key)
        while (busy := self.inflight.get(slot)) is not None:
            await asyncio.shield(busy)
        done = asyncio.get_running_loop().create_future()
        self.inflight[slot] = done
        try:
            async with self._locked(slot):
                return await self._once(slot, fingerprint(request, body), work)
        finally:
            del self.inflight[slot]
            done.set_result(None)

    @contextlib.asynccontextmanager
    async def _locked(self, slot: tuple[int, str]):
        """The key's lock across instances, while its first call runs (Redis unreachable:
        the database's uniqueness alone keeps a duplicate from applying)."""
        hot, token = self.gw.hot if self.gw.sync is not None else None, None
        if hot is not None:
            name = f"idem:{slot[0]}:{hashlib.sha256(slot[1].encode()).hexdigest()[:32]}"
            deadline = time.monotonic() + WAIT
            try:
                while (token := await hot.lock(name, LOCK_TTL)) is None:
                    if time.monotonic() > deadline:
                        raise ApiError(
                            409,
                            "idempotency_in_progress",
                            f"a request with this {HEADER} is still being applied; retry later",
                        )
                    await asyncio.sleep(0.05)
            except StateUnavailable:
                token = None
        try:
            yield
        finally:
            if token is not None:
                with contextlib.suppress(StateUnavailable):
                    await hot.unlock(name, token)

    async def _once(self, slot: tuple[int, str], print_: str, work: Work) -> web.Response:
        row = await self.store.idempotency_get(*slot, time.time() - TTL)
        if row is not None:
            return _replay(row, print_)

        def record(answer, status: int) -> list:
            stored = orjson.dumps(redact(answer), option=orjson.OPT_NON_STR_KEYS)
            # Expired records go first, so the insert fails only on a live duplicate.
            now = time.time()
            return [_prune_op(), o.IdempotencyPut(*slot, print_, status, stored, now)]

        try:
            answer, _ops, status = await self._apply(work, record)
        except ApiError as exc:
            # Another instance recorded this key meanwhile: its unit applied, this one not.
            row = await self.store.idempotency_get(*slot, time.time() - TTL)
            if exc.code != "write_failed" or row is None:
                raise
            return _replay(row, print_)
        return responses.json(answer, status)

    async def _apply(self, work: Work, extra: Callable[[Any, int], list]):
        """Run work() and store its unit; if the unit is not stored, memory is taken back."""

        def unit():
            answer, ops, status = work()
            ops = [*ops, *extra(answer, status)]
            return (answer, ops, status), ops

        return await changes.commit(self.state, self.store, unit, self.gw.sync)

    async def prune(self) -> None:
        """Forget records past their TTL (run at start)."""
        self.pruned_at = time.time()
        await self.store.write([_prune_op()])


def _replay(row: dict, print_: str) -> web.Response:
    """The recorded answer again, or 409 if the key came with a different request."""
    if row["fingerprint"] != print_:
        raise ApiError(
            409,
            "idempotency_conflict",
            f"this {HEADER} was already used for a different request; use a new key",
        )
    return responses.encoded(row["response"], row["status"], {"Idempotent-Replayed": "true"})


def _prune_op() -> o.IdempotencyPrune:
    return o.IdempotencyPrune(time.time() - TTL)


def guard(gw) -> Guard:
    """The gateway's one Guard (created on first use; pruned at start)."""
    g = getattr(gw, "idempotency", None)
    if g is None:
        g = gw.idempotency = Guard(gw)
        gw.on_startup(g.prune)
    return g
