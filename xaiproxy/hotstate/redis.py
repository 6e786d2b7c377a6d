"""The shared hot state in Redis (redis-py asyncio with the hiredis parser).

A request is one `admit` round trip (balance and reservation, HardLimit of every account
of its chain, every rate-limit scope) and one `settle` round trip (release the hold,
debit the real cost, charge the token buckets); the scripts are in `lua.py`. Redis holds
a copy: PostgreSQL stays the source of truth, and `ensure_loaded` rebuilds the money
state from its snapshot when Redis is empty (no `loaded` marker). Each rebuild has a new
generation; a hold taken under an older generation is not released again.

Every Redis failure raises `StateUnavailable`. No command is retried automatically: a
repeated `admit` would hold twice. `settle` is idempotent per request id, so its caller
may retry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from . import StateUnavailable, lua
from .wire import Wire

MAX_DELTA_N = 2**53 - 1  # Lua numbers are doubles: deltas stay exact below this
MONTH_TTL = 40 * 86400  # a month's spend counter outlives its month, then expires
# After a rebuild, admits and draws wait this long (503) while every instance holds its
# requests in flight again (each notices a new generation within a second: mirror.py).
SETTLING = 2.0
SETTLE_LAG = 0.002  # a settle waits up to this long to share a write with other commands
FIELDS = ("rpm", "rph", "rpd", "tpm", "tph", "tpd")


@dataclass(slots=True)
class Ask:
    """What one request asks of the shared state."""

    account_id: int
    estimate_n: int  # nano base units held while it runs
    floor_n: int  # the balance that must remain after the hold
    chain: tuple[tuple[int, int], ...]  # (account id, HardLimit in nano base, 0 = none), root..self
    scopes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (scope name, RPM..TPD), 0 = none
    month: str = ""  # "YYYY-MM" of the HardLimit month
    unlimited: bool = False  # root: no balance to hold


@dataclass(slots=True)
class Verdict:
    code: str  # "ok", "insufficient_balance", "hard_limit_reached", "rate_limit_exceeded"
    generation: str
    available_n: int = 0  # insufficient_balance: balance less reservations
    over: int = -1  # hard_limit_reached: the index in the chain
    wait: float = 0.0  # rate_limit_exceeded: seconds until it would fit
    limits: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    # {"requests"|"tokens": (limit, remaining, ms until empty)} of the tightest buckets


@dataclass(slots=True)
class Drawn:
    """What a management draw took, and under which generation."""

    generation: str
    reserved_n: int  # the account's reservations when it was taken
    takes: list[tuple[int, int]]  # (grant id, nano taken); id 0 = debt with no grant


@dataclass(slots=True)
class Snapshot:
    """The money state rebuilt from the source of truth."""

    grants: dict[int, list[tuple[int, int, float]]]  # account -> (grant id, remaining_n, expires)
    month: str = ""
    month_spend: dict[int, int] = field(default_factory=dict)  # account -> its subtree's spend
    taken_at: float = 0.0  # Redis time just before the store was read (0: unknown)


def grant_field(grant_id: int, expires_at: float) -> str:
    return f"{expires_at!r}|{grant_id}"


def _takes(flat: list) -> list[tuple[int, int]]:
    """[(grant id, nano taken)] from the scripts' flat field/take list; id 0 = no grant."""
    return [
        (int(_s(f).rsplit("|", 1)[1]), int(t)) for f, t in zip(flat[::2], flat[1::2], strict=True)
    ]


def _unready(code: str) -> None:
    if code == "not_loaded":
        raise StateUnavailable("redis holds no state yet (empty or restarted): rebuilding")
    if code == "settling":
        raise StateUnavailable("redis was just rebuilt: requests in flight are held again")


FAILURES = (TimeoutError, RedisError, OSError)  # redis-py's: the wire raises StateUnavailable


def _unavailable(exc: BaseException) -> StateUnavailable:
    return StateUnavailable(f"redis: {type(exc).__name__}: {exc}")


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisState:
    """`connections`: the most sockets this instance opens to Redis. `timeout`: the
    longest a command waits, each of: a free pooled connection, the TCP connect and
    handshake, the reply. Past it the command fails closed (StateUnavailable)."""

    def __init__(
        self, url: str, prefix: str = "xai:", timeout: float = 5.0, connections: int = 16
    ) -> None:
        self.prefix = prefix
        self.generation = ""  # the last generation this instance saw
        # Redis runs one command at a time, so a few connections keep it busy; a burst
        # queues on the pool instead of opening a socket per command. The timeout stays
        # above a lost SYN (resent after 1 s) and a stalled or busy Redis host, which
        # would otherwise refuse requests that a second's wait would have admitted; a
        # Redis that is down still fails at once (connection refused or reset).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.redis = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        # The data plane's two scripts go over one lean pipelined connection (wire.py).
        self.wire = Wire.for_url(url, timeout)
        if self.wire is not None:
            self._admit = self.wire.register_script(lua.ADMIT)
            self._settle = self.wire.register_script(lua.SETTLE, SETTLE_LAG)
        else:
            self._admit = self.redis.register_script(lua.ADMIT)
            self._settle = self.redis.register_script(lua.SETTLE)
        self._draw = self.redis.register_script(lua.DRAW)
        self._publish = self.redis.register_script(lua.PUBLISH)
        self._unlock = self.redis.register_script(lua.UNLOCK)
        self._adjust = self.redis.register_script(lua.ADJUST)
        self._rehold = self.redis.register_script(lua.REHOLD)
        self.marker = prefix + "loaded"
        self.settling = prefix + "settling"  # set by a rebuild for SETTLING seconds
        self.touched = prefix + "touched"  # zset: account id -> when its grants last changed
        self.channel = prefix + "changes"

    async def close(self) -> None:
        if self.wire is not None:
            self.wire.close()
        await self.redis.aclose()

    @contextlib.asynccontextmanager
    async def _guard(self):
        try:
            yield
        except FAILURES as exc:
            raise _unavailable(exc) from None

    # -- keys ------------------------------------------------------------------
    def _acc(self, account_id: int, what: str) -> str:
        return f"{self.prefix}a:{account_id}:{what}"

    def _keys(self, ask: Ask, request_id: str = "") -> list[str]:
        keys = [
            self.marker,
            self._acc(ask.account_id, "grants"),
            self._acc(ask.account_id, "reserved"),
            f"{self.prefix}settled:{request_id}",
        ]
        for acc_id, _ in ask.chain:
            keys += [self._acc(acc_id, "held"), self._acc(acc_id, f"spent:{ask.month}")]
        keys += [f"{self.prefix}rl:{name}" for name, _ in ask.scopes]
        return keys

    # -- the data plane ----------------------------------------------------------
    async def admit(self, ask: Ask) -> Verdict:
        """Check and hold in one round trip; nothing changes unless the verdict is ok."""
        if not 0 <= ask.estimate_n <= MAX_DELTA_N:
            raise ValueError(f"estimate {ask.estimate_n} out of range")
        args: list = [ask.estimate_n, ask.floor_n, int(ask.unlimited), len(ask.chain)]
        args.append(len(ask.scopes))
        args += [limit for _, limit in ask.chain]
        for _, values in ask.scopes:
            args += values
        try:  # not `_guard`: a context manager per call costs on the data plane
            reply = await self._admit(self._keys(ask) + [self.settling], args)
        except FAILURES as exc:
            raise _unavailable(exc) from None
        code = _s(reply[0])
        _unready(code)
        v = Verdict(code, self.generation)
        v.generation = self.generation = _s(reply[1])
        if code == "insufficient_balance":
            v.available_n = int(reply[2])
        elif code == "hard_limit_reached":
            v.over = int(reply[2]) - 1
        else:
            v.wait = float(reply[2])
            for kind, at in (("requests", 3), ("tokens", 6)):
                if int(reply[at]) >= 0:
                    v.limits[kind] = tuple(int(x) for x in reply[at : at + 3])
        return v

    async def settle(
        self,
        ask: Ask,
        generation: str,
        request_id: str,
        cost_n: int,
        tokens: int,
        late: float | None = None,
    ) -> list[tuple[int, int]] | None:
        """Release the hold, debit `cost_n`, charge `tokens`: the (grant id, taken) list
        (grant id 0: debt with no grant), or None when skipped. `late`: a retry whose usage
        the database committed `late` seconds ago (-1: not yet); after a rebuild whose
        snapshot counted it, skipped."""
        if not 0 <= cost_n <= MAX_DELTA_N:
            raise ValueError(f"cost {cost_n} out of range")
        args: list = [generation, ask.estimate_n, cost_n, max(tokens, 0), int(ask.unlimited)]
        args += [len(ask.chain), len(ask.scopes), "" if late is None else f"{late:.6f}", MONTH_TTL]
        for _, values in ask.scopes:
            args += values
        args.append(ask.account_id)
        keys = self._keys(ask, request_id) + [self.touched]
        try:
            reply = await self._settle(keys, args)
        except FAILURES as exc:
            raise _unavailable(exc) from None
        code = _s(reply[0])
        if code == "not_loaded":
            raise StateUnavailable("redis holds no state yet (empty or restarted): rebuilding")
        return None if code == "skipped" else _takes(reply[1:])

    async def rehold(self, holds: list[tuple[Ask, str]], generation: str) -> list[str]:
        """Hold requests in flight (ask, settle id) again under `generation`, each atomically,
        all in one round trip: per request "ok", "done" (settled or held already under it)
        or "other" (Redis has another generation now)."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            for ask, request_id in holds:
                keys = [self.marker, f"{self.prefix}settled:{request_id}"]
                keys.append(self._acc(ask.account_id, "reserved"))
                keys += [self._acc(acc_id, "held") for acc_id, _ in ask.chain]
                args = [generation, ask.estimate_n, int(ask.unlimited)]
                await self._rehold(keys, args, client=pipe)
            replies = await pipe.execute()
        return [_s(r[0]) for r in replies]

    # -- money from management -----------------------------------------------------
    async def draw(
        self, account_id: int, amount_n: int, allow_debt: bool = False
    ) -> list[tuple[int, int]] | None:
        """Take from an account's grants, soonest expiry first; None if its balance less
        its reservations cannot cover it (and debt is not allowed)."""
        if not 0 < amount_n <= MAX_DELTA_N:
            raise ValueError(f"amount {amount_n} out of range")
        drawn = await self.take(account_id, amount_n, allow_debt)
        return None if drawn is None else drawn.takes

    async def take(
        self, account_id: int, amount_n: int, allow_debt: bool = False, exact: int | None = None
    ) -> Drawn | None:
        """`draw` with what the caller needs to undo it and to know what it saw: the
        generation and the account's reservations. amount 0: everything available.
        `exact` (a delete): None unless the account's reservations are `exact` and
        `amount_n` is all that is free (balance less them, if positive)."""
        if not 0 <= amount_n <= MAX_DELTA_N:
            raise ValueError(f"amount {amount_n} out of range")
        keys = [self.marker, self._acc(account_id, "grants"), self._acc(account_id, "reserved")]
        keys += [self.touched, self.settling]
        args = [amount_n, int(allow_debt), account_id, "" if exact is None else exact]
        async with self._guard():
            reply = await self._draw(keys, args)
        code = _s(reply[0])
        _unready(code)
        if code in ("insufficient_balance", "quote"):
            return None
        return Drawn(_s(reply[1]), int(reply[2]), _takes(reply[3:]))

    async def adjust(
        self,
        account_id: int,
        generation: str,
        puts: list[tuple[int, int, float]] = (),
        adds: list[tuple[int, int]] = (),
        step: str = "",
    ) -> bool:
        """Put new grants (grant id, remaining, expires; kept if already there) and add to
        existing ones (grant id, amount), once per `step` and only under `generation`
        ("" = any). False when skipped: a rebuild since then, or the step already done."""
        args: list = [generation, account_id]
        for grant_id, remaining_n, expires_at in puts:
            args += [grant_field(grant_id, expires_at), remaining_n, "put"]
        for grant_id, amount_n in adds:
            if not -MAX_DELTA_N <= amount_n <= MAX_DELTA_N:
                raise ValueError(f"amount {amount_n} out of range")
            args += [grant_id, amount_n, "add"]
        step = step or secrets.token_hex(8)
        keys = [self.marker, self._acc(account_id, "grants"), self.touched]
        async with self._guard():
            reply = await self._adjust(keys + [f"{self.prefix}step:{step}"], args)
        code = _s(reply[0])
        if code == "not_loaded":
            raise StateUnavailable("redis holds no state yet (empty or restarted): rebuilding")
        return code == "ok"

    async def put_grant(
        self, account_id: int, grant_id: int, remaining_n: int, expires_at: float
    ) -> None:
        """A new grant; one already there (e.g. loaded by a rebuild) is kept as it is."""
        async with self._guard():
            await self.redis.hsetnx(
                self._acc(account_id, "grants"), grant_field(grant_id, expires_at), remaining_n
            )

    async def grants(self, account_ids: list[int]) -> dict[int, dict[int, int]]:
        """{account: {grant id: remaining}} as Redis holds them now (display copies)."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            for acc_id in account_ids:
                pipe.hgetall(self._acc(acc_id, "grants"))
            raw = await pipe.execute()
        return {
            acc_id: {int(_s(f).rsplit("|", 1)[1]): int(v) for f, v in fields.items()}
            for acc_id, fields in zip(account_ids, raw, strict=True)
        }

    async def touched_since(self, since: float) -> tuple[float, list[int]]:
        """(Redis time now, accounts whose grants changed after `since`); forgets entries
        older than a minute. Notes the generation (`self.generation`) on the way."""
        async with self._guard():
            t, ids, _, gen = await (
                self.redis.pipeline(transaction=False)
                .time()
                .zrangebyscore(self.touched, f"({since!r}", "+inf")
                .zremrangebyscore(self.touched, "-inf", since - 60)
                .get(self.marker)
                .execute()
            )
        if gen:
            self.generation = _s(gen)
        return t[0] + t[1] / 1e6, [int(x) for x in ids]

    async def balance(self, account_id: int) -> tuple[int, int]:
        """(balance, reserved) in nano base units, as Redis sees them now."""
        async with self._guard():
            t, raw, reserved = await (
                self.redis.pipeline(transaction=False)
                .time()
                .hgetall(self._acc(account_id, "grants"))
                .get(self._acc(account_id, "reserved"))
                .execute()
            )
        now = t[0] + t[1] / 1e6
        total = 0
        for f, rem in raw.items():
            rem, expires = int(rem), float(_s(f).split("|", 1)[0])
            if expires > now or rem < 0:
                total += rem
        return total, int(reserved or 0)

    async def holdings(self, account_id: int) -> tuple[list[tuple[int, int, float]], int]:
        """([(grant id, remaining, expires)], reserved) of one account, as Redis has them."""
        async with self._guard():
            raw, reserved = await (
                self.redis.pipeline(transaction=False)
                .hgetall(self._acc(account_id, "grants"))
                .get(self._acc(account_id, "reserved"))
                .execute()
            )
        found = []
        for f, rem in raw.items():
            expires, grant_id = _s(f).split("|", 1)
            found.append((int(grant_id), int(rem), float(expires)))
        return found, int(reserved or 0)

    async def own_month_spends(
        self, accounts: list[tuple[int, list[int]]], month: str
    ) -> dict[int, int]:
        """{account: its own spend in `month`} for (account, its children's ids) pairs:
        its subtree's spend less its children's subtrees' (one pipeline)."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            for acc_id, children in accounts:
                for i in (acc_id, *children):
                    pipe.get(self._acc(i, f"spent:{month}"))
            raw = iter(await pipe.execute())
        out = {}
        for acc_id, children in accounts:
            tree = int(next(raw) or 0)
            out[acc_id] = tree - sum(int(next(raw) or 0) for _ in children)
        return out

    async def release_lock(self, name: str) -> None:
        """Drop a lock whoever holds it (a claim that is over: see `lock`)."""
        async with self._guard():
            await self.redis.delete(f"{self.prefix}lock:{name}")

    async def month_spend(self, account_id: int, month: str) -> int:
        async with self._guard():
            return int(await self.redis.get(self._acc(account_id, f"spent:{month}")) or 0)

    # -- rebuild -------------------------------------------------------------------
    async def time(self) -> float:
        """Redis's clock, shared by every instance."""
        async with self._guard():
            t = await self.redis.time()
        return t[0] + t[1] / 1e6

    async def loaded(self) -> str:
        """The current generation, "" when Redis holds no state."""
        async with self._guard():
            gen = await self.redis.get(self.marker)
        self.generation = _s(gen) if gen else ""
        return self.generation

    async def load(self, snapshot: Snapshot, settling: float = 0.0) -> str:
        """Replace the money state with `snapshot` in one transaction, under a new generation.
        Reservations start at zero; rate-limit counters, sleeps and locks are kept. Admits
        and draws then wait `settling` seconds for requests in flight to be held again."""
        gen = secrets.token_hex(8)
        if snapshot.taken_at:  # late settles compare their commit with it (lua.SETTLE)
            gen += f"@{snapshot.taken_at:.6f}"
        async with self._guard():
            old = [k async for k in self.redis.scan_iter(match=f"{self.prefix}a:*", count=1000)]
            pipe = self.redis.pipeline(transaction=True)
            if old:
                pipe.unlink(*old)
            for acc_id, grants in snapshot.grants.items():
                mapping = {grant_field(g, exp): rem for g, rem, exp in grants}
                if mapping:
                    pipe.hset(self._acc(acc_id, "grants"), mapping=mapping)
            for acc_id, spent in snapshot.month_spend.items():
                pipe.set(self._acc(acc_id, f"spent:{snapshot.month}"), spent, ex=MONTH_TTL)
            pipe.set(self.marker, gen)
            if settling > 0:
                pipe.set(self.settling, gen, px=int(settling * 1000))
            await pipe.execute()
        self.generation = gen
        return gen

    async def ensure_loaded(
        self, snapshot: Callable[[], Awaitable[Snapshot]], patience: float = 30.0
    ) -> str:
        """The generation; when Redis is empty, one instance rebuilds it from `snapshot()`
        (under a lock) while the others wait for the marker. A rebuild by an instance that
        saw an earlier generation waits SETTLING (instances may hold requests in flight);
        a first start does not."""
        before = self.generation
        gen = await self.loaded()
        if gen:
            return gen
        token = await self.lock("rebuild", patience)
        if token:
            try:
                if not await self.loaded():  # another instance may have just finished
                    await self.load(await snapshot(), SETTLING if before else 0.0)
            finally:
                await self.unlock("rebuild", token)
            return self.generation
        deadline = asyncio.get_running_loop().time() + patience
        while not await self.loaded():
            if asyncio.get_running_loop().time() > deadline:
                raise StateUnavailable("redis is being rebuilt by another instance", 2)
            await asyncio.sleep(0.05)
        return self.generation

    # -- provider key sleeps ---------------------------------------------------------
    async def sleep_key(self, key_id: int, seconds: float, reason: str) -> None:
        """Put a provider key to sleep for every instance; it wakes when the entry expires."""
        async with self._guard():
            await self.redis.set(
                f"{self.prefix}sleep:{key_id}", reason, px=max(int(seconds * 1000), 1)
            )
        await self.publish("key_sleep", key_id)

    async def wake_key(self, key_id: int) -> None:
        async with self._guard():
            await self.redis.delete(f"{self.prefix}sleep:{key_id}")
        await self.publish("key_sleep", key_id)

    async def sleeping(self, key_ids: list[int]) -> dict[int, tuple[str, float]]:
        """{key id: (reason, seconds left)} of the keys asleep now."""
        if not key_ids:
            return {}
        names = [f"{self.prefix}sleep:{k}" for k in key_ids]
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.get(name).pttl(name)
            raw = await pipe.execute()
        out = {}
        for key_id, reason, ttl in zip(key_ids, raw[::2], raw[1::2], strict=True):
            if reason is not None and ttl > 0:
                out[key_id] = (_s(reason), ttl / 1000)
        return out

    # -- locks (idempotency, rebuild) -------------------------------------------------
    async def lock(self, name: str, ttl: float) -> str | None:
        """A token if this caller got the lock (SET NX PX), else None. It expires by itself,
        so a crashed holder never blocks the name for longer than `ttl`."""
        token = secrets.token_hex(8)
        async with self._guard():
            ok = await self.redis.set(
                f"{self.prefix}lock:{name}", token, nx=True, px=max(int(ttl * 1000), 1)
            )
        return token if ok else None

    async def unlock(self, name: str, token: str) -> bool:
        async with self._guard():
            return bool(await self._unlock([f"{self.prefix}lock:{name}"], [token]))

    # -- change events ------------------------------------------------------------------
    async def publish(self, kind: str, ident: int | str) -> int:
        """Announce a change to every instance; returns the new version."""
        async with self._guard():
            return int(
                await self._publish([self.prefix + "version"], [self.channel, f"{kind} {ident}"])
            )

    async def version(self) -> int:
        async with self._guard():
            return int(await self.redis.get(self.prefix + "version") or 0)

    async def listen(
        self, on_event: Callable[[int, str, str], None], ready: asyncio.Event | None = None
    ) -> None:
        """Call on_event(version, kind, ident) for each change until cancelled. Events can
        be missed (a reconnect): callers compare `version()` periodically and reload."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            async with self._guard():
                await pubsub.subscribe(self.channel)
            if ready is not None:
                ready.set()
            while True:
                async with self._guard():
                    msg = await pubsub.get_message(timeout=1.0)
                if msg is None:
                    continue
                version, kind, ident = _s(msg["data"]).split(" ", 2)
                on_event(int(version), kind, ident)
        finally:
            await pubsub.aclose()
