"""Routing: which provider key serves a request, in which order, and which keys rest.

Candidates are the owner's enabled, awake keys at the model's level (LEVEL_MAPPER),
taken round-robin, then the keys of the level SWITCH_OVER names, following the chain
without loops; levels the caller's AllowLevels (or an ancestor's) excludes are skipped. Pools are cached until `state.keys_version` changes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from yarl import URL

from . import ssrf
from .ssrf import Refused  # noqa: F401 (re-exported: what an SSRF refusal raises)
from .state import ProviderKey
from .store.ops import KeySleep


class Router:
    def __init__(self, gw) -> None:
        self.gw = gw
        self._version = -1
        self._pools: dict[tuple[int, int], list[ProviderKey]] = {}
        self._turns: dict[tuple[int, int], int] = {}
        self._bases: dict[int, str] = {}

    # -- candidates ---------------------------------------------------------
    def _pool(self, owner_id: int, level: int) -> list[ProviderKey]:
        state = self.gw.state
        if self._version != state.keys_version:
            self._pools.clear()
            self._bases.clear()
            self._version = state.keys_version
        pool = self._pools.get((owner_id, level))
        if pool is None:
            pool = self._pools[(owner_id, level)] = sorted(
                state.pool(owner_id, level), key=lambda k: k.id
            )
        return pool

    @staticmethod
    def levels(switch_over: dict[int, int], level: int, allowed=None) -> list[int]:
        """The level, then SWITCH_OVER's chain from it, each level once; only those
        `allowed(level)` passes, when given."""
        out = [level]
        while (level := switch_over.get(level)) is not None and level not in out:
            out.append(level)
        return out if allowed is None else [lv for lv in out if allowed(lv)]

    def candidates(
        self, owner_id: int, switch_over: dict, level: int, allowed=None
    ) -> Iterator[tuple[int, ProviderKey]]:
        """(level, key) in the order to try them; round-robin within a level."""
        for lv in self.levels(switch_over, level, allowed):
            pool = self._pool(owner_id, lv)
            if not pool:
                continue
            n = len(pool)
            start = self._turns.get((owner_id, lv), 0)
            self._turns[(owner_id, lv)] = (start + 1) % n
            now = time.time()
            for i in range(n):
                key = pool[(start + i) % n]
                if key.awake(now):
                    yield lv, key

    def resting(self, owner_id: int, switch_over: dict, level: int, allowed=None) -> float:
        """Seconds until the first enabled key of the chain wakes; 0 when there is none."""
        chain = self.levels(switch_over, level, allowed)
        keys = [k for lv in chain for k in self._pool(owner_id, lv)]
        waits = [k.sleep_until - time.time() for k in keys if k.status]
        return max(min(waits), 0.0) if waits else 0.0

    # -- key health ---------------------------------------------------------
    def sleep(self, key: ProviderKey, seconds: float, reason: str) -> None:
        """Rest a key (in memory now, in the store with the next batch, for /x-conf)."""
        key.sleep_until = time.time() + seconds
        key.sleep_reason = reason
        self.gw.store.submit([KeySleep(key.id, key.sleep_until, reason)])
        if self.gw.sync is not None:  # every instance skips it (in the background)
            self.gw.sync.sleep_key(key.id, seconds, reason)
        if self.gw.metrics is not None:
            self.gw.metrics.key_slept(key, reason)

    def wake(self, key: ProviderKey) -> None:
        """End a key's rest (a probe found it answering again)."""
        key.sleep_until, key.sleep_reason = 0.0, ""
        self.gw.store.submit([KeySleep(key.id, 0.0, "")])
        if self.gw.sync is not None:
            self.gw.sync.wake_key(key.id)

    # -- addresses ----------------------------------------------------------
    def base(self, key: ProviderKey) -> str:
        base = self._bases.get(key.id)
        if base is None:
            base = key.provider.rstrip("/")
            if base.endswith("/v1"):
                base = base[:-3]  # the request path brings its own /v1
            self._bases[key.id] = base
        return base

    def url(self, key: ProviderKey, raw_path: str) -> URL:
        return URL(self.base(key) + raw_path, encoded=True)

    def guarded(self, key: ProviderKey) -> bool:
        return ssrf.restricted(key.owner_id == self.gw.state.root.id, self.gw.settings)

    def session(self, key: ProviderKey):
        """The upstream session for this key: the SSRF-checked one unless the rule is off for it."""
        return self.gw.checked_session if self.guarded(key) else self.gw.session

    def guard(self, key: ProviderKey) -> None:
        """Literal addresses skip the connector's resolver, so they are checked here."""
        host = URL(self.base(key)).raw_host or ""
        if self.guarded(key) and ssrf.is_literal(host) and ssrf.is_private(host):
            raise Refused(host)
