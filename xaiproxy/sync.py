"""Coherence between instances sharing one database and one Redis (SPEC 12).

Every instance serves the data plane from memory. A management change commits its unit
to the store, then `announce` publishes what the unit touched (accounts, provider keys,
owner configs) as change events: `gw.hot.publish` bumps a version and PUBLISHes it.
Every instance listens and reloads just those things from the store into its memory,
in place. A gap in the versions, a reconnect, or a version check that finds the
instance behind (every `interval`) reloads everything, diffed into memory.

Money is not reloaded here: an account already in memory keeps its grants, reservations
and month spend (the shared money state is billing's, in Redis); an account new to
this instance gets its grants from the store.

Provider key sleeps are shared: routing sets them in Redis with their expiry (which
publishes an event); every instance marks its memory, and a starting instance reads
them all. The data plane never waits on Redis for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson

from . import boot
from .hotstate import StateUnavailable
from .ownerconf import OwnerConfig
from .state import Account, Grant
from .store import ops as o

log = logging.getLogger("xaiproxy.sync")

INTERVAL = 0.25  # seconds between version checks; behind at two checks running: reload
RETRY = 0.5  # seconds between attempts to reach Redis again
CHUNK = 200  # ids per event
ALL = "all"  # the event that makes every instance reload everything
LOCK_TTL = 30.0  # a lock's life if its holder dies
# What each op of a unit touched, as (event kind, id).
_TOUCHED = {
    o.AccountPut: lambda op: ("account", op.row["id"]),
    o.AccountSet: lambda op: ("account", op.id),
    o.AccountMove: lambda op: ("account", op.id),
    o.AccountDelete: lambda op: ("account", op.id),
    o.KeyPut: lambda op: ("key", op.row["id"]),
    o.KeySet: lambda op: ("key", op.id),
    o.KeyDelete: lambda op: ("key", op.id),
    o.ConfigSet: lambda op: ("config", op.owner_id),
}


def touched(ops: list) -> dict[str, list[int]]:
    """{event kind: ids} of what a unit changes in memory that other instances keep."""
    out: dict[str, list[int]] = {}
    for op in ops:
        fn = _TOUCHED.get(type(op))
        if fn is not None:
            kind, ident = fn(op)
            ids = out.setdefault(kind, [])
            if ident not in ids:
                ids.append(ident)
    return out


class Sync:
    """`gw.sync`: announces this instance's changes and follows the others'."""

    def __init__(self, gw, interval: float = INTERVAL) -> None:
        self.gw = gw
        self.hot = gw.hot
        self.interval = interval
        self.applied = 0  # the version memory is known to include
        self.received = 0  # the highest version an event brought
        self.stale = False  # events may have been missed: reload everything
        self.pending = False  # a publish failed: announce ALL once Redis answers
        self.reloads = 0  # full reloads done (tests, logs)
        self.queue: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.background: set[asyncio.Task] = set()
        self.listening = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------
    async def begin(self) -> None:
        """Before the state loads: the version it will include, and ids in blocks."""
        from .ids import IdBlocks

        try:
            self.applied = self.received = await self.hot.version()
        except StateUnavailable as exc:
            log.warning("redis unreachable at start (%s): reloading when it answers", exc)
            self.stale = True
        self.gw.state.ids = IdBlocks(self.gw.store)

    async def start(self) -> None:
        """After the state loaded: key sleeps, ids, then follow the other instances."""
        for table in ("accounts", "grants", "provider_keys"):
            self.gw.state.ids.want(table)
        with contextlib.suppress(StateUnavailable):
            self._mark_sleeps(await self.hot.sleeping(list(self.gw.state.keys)))
        await self.gw.state.ids.ready()
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._listen(), name="xaiproxy-sync-listen"),
            loop.create_task(self._apply(), name="xaiproxy-sync-apply"),
            loop.create_task(self._check(), name="xaiproxy-sync-check"),
        ]
        self.gw.on_shutdown(self.stop)
        with contextlib.suppress(TimeoutError):  # else the version check catches up
            await asyncio.wait_for(self.listening.wait(), 2.0)

    async def stop(self) -> None:
        tasks = [*self.tasks, *self.background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks = []

    @contextlib.asynccontextmanager
    async def locked(self, name: str, patience: float = LOCK_TTL):
        """Hold a lock shared by every instance (Redis unreachable: run without it)."""
        deadline = time.monotonic() + patience
        token = None
        try:
            while (token := await self.hot.lock(name, LOCK_TTL)) is None:
                if time.monotonic() > deadline:
                    raise StateUnavailable(f"lock {name!r} is held by another instance", 2)
                await asyncio.sleep(0.05)
        except StateUnavailable as exc:
            log.warning("running %s without the shared lock: %s", name, exc)
        try:
            yield
        finally:
            if token is not None:
                with contextlib.suppress(StateUnavailable):
                    await self.hot.unlock(name, token)

    # -- announcing ---------------------------------------------------------------
    async def announce(self, ops: list) -> None:
        """After a unit is committed: tell every instance what it changed. Never fails
        the change: when Redis does not answer, everything is announced once it does."""
        for kind, ids in touched(ops).items():
            for at in range(0, len(ids), CHUNK):
                await self._publish(kind, ",".join(map(str, ids[at : at + CHUNK])))

    async def _publish(self, kind: str, ident: str) -> None:
        try:
            await self.hot.publish(kind, ident)
        except StateUnavailable as exc:
            log.warning("change event %s not published (%s): retrying as a full reload", kind, exc)
            self.pending = True

    def share(self, kind: str, ident: str) -> None:
        """Publish without waiting (the data plane's changes: provider objects)."""
        self._later(self._publish(kind, ident))

    def sleep_key(self, key_id: int, seconds: float, reason: str) -> None:
        """Put a provider key to sleep for every instance (in the background)."""
        self._later(self.hot.sleep_key(key_id, seconds, reason))

    def wake_key(self, key_id: int) -> None:
        self._later(self.hot.wake_key(key_id))

    def _later(self, coro) -> None:
        async def run():
            try:
                await coro
            except StateUnavailable as exc:
                log.warning("shared state not updated: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # -- following ------------------------------------------------------------------
    def _event(self, version: int, kind: str, ident: str) -> None:
        self.received = max(self.received, version)
        self.queue.put_nowait((version, kind, ident))

    async def _listen(self) -> None:
        first = True
        while True:
            ready = asyncio.Event()
            watch = asyncio.get_running_loop().create_task(self._on_ready(ready, first))
            try:
                await self.hot.listen(self._event, ready)
            except StateUnavailable as exc:
                log.warning("change events interrupted (%s): reconnecting", exc)
            finally:
                watch.cancel()
                self.listening.clear()
            first = False
            await asyncio.sleep(RETRY)

    async def _on_ready(self, ready: asyncio.Event, first: bool) -> None:
        await ready.wait()
        self.listening.set()
        if not first:  # events may have passed while the connection was down
            self.stale = True
            self._event(0, ALL, "")

    async def _check(self) -> None:
        """Every interval: publish what failed to publish, and reload if behind."""
        behind = 0
        while True:
            await asyncio.sleep(self.interval)
            try:
                if self.pending:
                    self.pending = False
                    await self._publish(ALL, "")
                remote = await self.hot.version()
            except StateUnavailable:
                self.stale = True
                continue
            if self.stale or remote < self.received:  # missed events, or Redis restarted
                self.stale, behind = False, 0
                self.received = min(self.received, remote)
                self._event(0, ALL, "")
            elif remote > self.received:
                if behind and self.received < behind:
                    log.info("missed change events up to version %d: reloading", behind)
                    self._event(0, ALL, "")
                    behind = 0
                else:
                    behind = remote
            else:
                behind = 0

    async def _apply(self) -> None:
        while True:
            version, kind, ident = await self.queue.get()
            try:
                async with self.gw.state.gate.reload():
                    if kind == ALL or version > self.applied + 1:
                        await self.reload_all()
                    elif version == self.applied + 1:
                        await self._apply_one(kind, ident)
                        self.applied = version
            except StateUnavailable:
                self.stale = True
            except Exception:
                log.exception("change event %s %s not applied: reloading", kind, ident[:100])
                self.stale = True

    async def _apply_one(self, kind: str, ident: str) -> None:
        if kind == "key_sleep":
            key_id = int(ident)
            self._mark_sleeps(await self.hot.sleeping([key_id]), [key_id])
            return
        if kind == "object":
            self._put_object(*orjson.loads(ident))
            return
        ids = [int(i) for i in ident.split(",") if i]
        if kind == "account" and not await self._accounts(ids):
            await self.reload_all()  # a parent or child this instance does not know
        elif kind == "key":
            for key_id in ids:
                self._put_key(key_id, await self.gw.store.load_key(key_id))
        elif kind == "config":
            for owner_id in ids:
                version, texts = await self.gw.store.load_config(owner_id)
                self._put_config(owner_id, version, texts)

    # -- reloads -------------------------------------------------------------------
    async def reload_all(self) -> None:
        """Everything from the store, diffed into memory (not a restart)."""
        version = await self.hot.version()
        store, state = self.gw.store, self.gw.state
        rows = await store.load_accounts()
        grants = await store.load_grants(time.time())
        key_rows = await store.load_keys()
        versions, texts = await store.load_configs()
        objects = await store.load_objects()
        sleeps = await self.hot.sleeping([r["id"] for r in key_rows])
        # From here on no await: memory changes in one step.
        new = {r["id"] for r in rows} - set(state.accounts)
        by_account: dict[int, list[dict]] = {}
        for g in grants:
            if g["account_id"] in new:
                by_account.setdefault(g["account_id"], []).append(g)
        self._put_accounts(rows, by_account)
        self._drop_accounts(set(state.accounts) - {r["id"] for r in rows})
        stored = {r["id"]: r for r in key_rows}
        for key_id in set(state.keys) | set(stored):
            self._put_key(key_id, stored.get(key_id))
        self._mark_sleeps(sleeps, list(state.keys))
        for owner_id in set(versions) | set(texts) | set(state.configs):
            self._put_config(owner_id, versions.get(owner_id, 0), texts.get(owner_id, {}))
        for row in objects:
            self._put_object(*row)
        self.applied = version  # lower than before only after Redis restarted empty
        self.received = max(self.received, version)
        self.reloads += 1

    async def _accounts(self, ids: list[int]) -> bool:
        """Reload these accounts; False when the tree around them is not as expected."""
        store = self.gw.store
        rows = {i: await store.load_account(i) for i in ids}
        known = self.gw.state.accounts
        grants = {
            i: await store.load_account_grants(i, time.time())
            for i, row in rows.items()
            if row is not None and i not in known
        }
        live = sorted((r for r in rows.values() if r is not None), key=lambda r: r["level"])
        if not self._put_accounts(live, grants):
            return False
        return self._drop_accounts({i for i, row in rows.items() if row is None})

    def _put_accounts(self, rows: list[dict], grants: dict[int, list[dict]]) -> bool:
        """Add or refresh accounts, parents first; False if a parent is unknown."""
        state, ok = self.gw.state, True
        for row in rows:
            values = boot.account_values(row)
            acc = state.accounts.get(row["id"])
            if row["parent_id"] is not None and row["parent_id"] not in state.accounts:
                ok = False
            elif acc is None:
                acc = Account(**values)
                acc.grants = [Grant(**g) for g in grants.get(row["id"], ())]
                state.add_account(acc)
            else:
                state.refresh(acc, values)
        return ok

    def _drop_accounts(self, ids: set[int]) -> bool:
        """Remove deleted accounts, deepest first; False if one still has children here.
        Each is marked deleted: its rest goes to its heir once its last request anywhere
        has ended (billing: now, or when its last request here ends)."""
        state, ok = self.gw.state, True
        gone = sorted((state.accounts[i] for i in ids if i in state.accounts), key=_depth)
        for acc in reversed(gone):
            if acc.children:
                ok = False
                continue
            state.remove_account(acc)
            self.gw.limiter.forget(acc.id)
            acc.deleted = True
            if self.gw.billing.shared is not None:
                self.gw.billing.settle_deleted(acc)
        return ok

    def _put_key(self, key_id: int, row: dict | None) -> None:
        """Add, refresh in place (probes hold the object) or drop a provider key; its
        sleep is Redis's to say."""
        state = self.gw.state
        key = state.keys.get(key_id)
        if row is None:
            if key is not None:
                state.drop_key(key_id)
            return
        fresh = boot.open_key(self.gw.box, row)
        if key is None:
            fresh.sleep_until, fresh.sleep_reason = 0.0, ""
            state.put_key(fresh)
            return
        for column in ("owner_id", "name", "level", "provider", "secret", "status", "config"):
            setattr(key, column, getattr(fresh, column))
        key.type, key.created_at, key.updated_at = fresh.type, fresh.created_at, fresh.updated_at
        state.put_key(key)  # routing's pools follow (keys_version)

    def _mark_sleeps(self, sleeps: dict, key_ids: list[int] | None = None) -> None:
        """Memory follows Redis: keys in `sleeps` asleep, the other `key_ids` awake."""
        now = time.time()
        keys = self.gw.state.keys
        for key_id in key_ids if key_ids is not None else sleeps:
            key = keys.get(key_id)
            if key is None:
                continue
            reason, left = sleeps.get(key_id, ("", 0.0))
            key.sleep_until, key.sleep_reason = (now + left, reason) if left else (0.0, "")

    def _put_config(self, owner_id: int, version: int, texts: dict[str, str]) -> None:
        values = {k: orjson.loads(v) for k, v in texts.items()}
        self.gw.state.configs[owner_id] = OwnerConfig.build(
            owner_id, version, values, self.gw.prices
        )

    def _put_object(self, owner_id: int, object_id: str, account_id: int, dna: str) -> None:
        self.gw.objects.owned.setdefault((owner_id, object_id), (account_id, dna))


def _depth(acc: Account) -> int:
    return len(acc.chain)
