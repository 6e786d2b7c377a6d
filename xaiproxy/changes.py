"""The one way to change accounts and provider keys (SPEC 8): memory, caches, store ops.

Each call checks nothing a plugin must decide (permissions, field rules): it applies
a change already validated, keeps every index, matcher and cache in step, registers
the undo with `state.remember` (so a unit that is not stored is taken back), and
returns the typed store ops to persist in the caller's unit. Money moves through
`gw.ledger`, which the calls here use with explicit rates.

`commit` runs a change and stores its unit all or nothing: when the unit is not
stored, every change made in memory is taken back (SPEC 5 / issue 9). Every
management write goes through it (the idempotency guard does too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson

from . import credentials
from .errors import ApiError
from .state import KEY_COLUMNS, Account, ProviderKey, State
from .store import ops as o

# Fields with a compiled form (matchers, rules), rebuilt when one changes.
COMPILED = {
    "allow_ips",
    "allow_models",
    "resources",
    "allow_levels",
    "model_mapper",
    "level_mapper",
}


# work() -> (result, ops): checks and changes memory synchronously (no await, so no
# other change interleaves) and returns the store ops of its unit.
Work = Callable[[], tuple[Any, list]]


async def commit(state: State, store, work: Work, sync=None) -> Any:
    """Run work() and store its unit; if the unit is not stored, memory is taken back.
    With money in Redis (`state.moves`), the unit's money moves are made there first.
    Once stored, other instances are told what changed (`sync`, when they exist)."""
    async with state.gate.change():  # a reload from the store never lands in between
        return await _commit(state, store, work, sync)


async def _commit(state: State, store, work: Work, sync) -> Any:
    if state.ids is not None:
        await state.ids.ready()  # ids shared with other instances: have some at hand
    moves, shared = state.moves, None
    if moves is None:
        with state.recording() as undo:
            result, ops = work()
        stored = _queue(store, ops)
    else:
        # The draws await Redis between work() and the queueing: one unit at a time, so
        # units reach the writer in the order memory saw them (a later unit's row never
        # lands under an earlier one's).
        async with moves.order:
            result, ops, shared, undo = await moves.prepare(state, work)
            stored = _queue(store, ops)
    try:
        await stored
    except Exception as exc:
        undo()
        if shared is not None:
            await moves.rollback(shared)
        raise ApiError(
            500, "write_failed", "the change could not be stored and was not applied; retry"
        ) from exc
    if shared is not None:
        await moves.after_commit(shared)
    undo.committed()
    if sync is not None:
        await sync.announce(ops)
    return result


def _queue(store, ops: list) -> asyncio.Future:
    """The unit queued for the writer now; a unit the backend cannot render fails its future."""
    try:
        return store.submit(ops, wait=True)
    except Exception as exc:
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(exc)
        return fut


class Changes:
    """`gw.changes`: account and key mutations bound to one gateway."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.state: State = gw.state

    async def commit(self, work: Work) -> Any:
        """work()'s result once its unit is stored; 500 `write_failed`, memory as it was, if not."""
        return await commit(self.state, self.gw.store, work, self.gw.sync)

    # -- accounts ----------------------------------------------------------------
    def create(self, acc: Account) -> list:
        """Add a new account (its id from state.next_id) under its parent."""
        self.state.add_account(acc)
        return [o.AccountPut(acc.row())]

    def keep(self, acc: Account, attrs: set[str]) -> None:
        """Remember acc's fields a change may set, so an unstored change is taken back
        (name and email undo through state.rename)."""
        old = {a: getattr(acc, a) for a in attrs - {"name", "email"}}
        old["updated_at"] = acc.updated_at
        state = self.state

        def restore() -> None:
            for attr, value in old.items():
                setattr(acc, attr, value)
            acc.compile()
            state.relink(acc)

        state.remember(restore)

    def update(self, acc: Account, values: dict) -> list:
        """Set fields (attribute names), keeping lookups, matchers and the tree in step."""
        state = self.state
        state.rename(acc, values.get("name"), values.get("email"))
        for attr, value in values.items():
            setattr(acc, attr, value)
        if values.keys() & COMPILED:
            acc.compile()
        if "owner" in values:
            state.relink(acc)
        acc.updated_at = time.time()
        # Only the columns set: another instance may be changing other fields of this account.
        row = acc.row()
        return [o.AccountSet(acc.id, {c: row[c] for c in (*values, "updated_at") if c in row})]

    def delete(self, acc: Account) -> tuple[list, list[Account]]:
        """Drop acc (its money already moved by the ledger); its children move up.

        Returns the ops and every account whose place in the tree changed.
        """
        state, parent = self.state, acc.parent
        moved: list[Account] = []
        for child in list(acc.children.values()):
            state.reparent(child, parent)
            moved += [child, *state.subtree(child)]
        state.remove_account(acc)
        self.gw.limiter.forget(acc.id)
        ops: list = [o.AccountDelete(acc.id)]
        ops += [o.AccountMove(m.id, m.parent_id, m.dna, m.level) for m in moved]
        return ops, moved

    def rotate(self, acc: Account, key: str) -> list:
        """Give acc a new client key; the old one stops at once."""
        stamp = acc.updated_at
        self.state.remember(lambda: setattr(acc, "updated_at", stamp))
        self.state.set_key(acc, credentials.hash_key(key), credentials.display_prefix(key))
        acc.updated_at = now = time.time()
        fields = {"key_hash": acc.key_hash, "key_prefix": acc.key_prefix, "updated_at": now}
        return [o.AccountSet(acc.id, fields)]

    # -- provider keys -------------------------------------------------------------
    def put_key(self, key: ProviderKey) -> list:
        """Add or replace a provider key; routing's pools follow (keys_version)."""
        self.state.put_key(key)
        return [o.KeyPut(self._key_row(key))]

    def _key_row(self, key: ProviderKey) -> dict:
        """The key as stored: its secret and its Config's header values sealed."""
        row = {c: getattr(key, c) for c in KEY_COLUMNS}
        row |= {"secret": self.gw.box.seal(key.secret), "status": int(key.status)}
        return row | {"config": orjson.dumps(self.gw.box.seal_config(key.config)).decode()}

    def update_key(self, key: ProviderKey, values: dict) -> list:
        """Set a key's fields (attribute names); re-enabling wakes a sleeping key."""
        kept = [*values, "updated_at"]
        if values.get("status") is True:
            kept += ["sleep_until", "sleep_reason"]
        old = {attr: getattr(key, attr) for attr in kept}
        self.state.remember(lambda: self._restore_key(key, old))
        for attr, value in values.items():
            setattr(key, attr, value)
        if values.get("status") is True:
            key.sleep_until, key.sleep_reason = 0.0, ""
            if self.gw.sync is not None:  # the other instances wake it too
                self.state.on_commit(lambda: self.gw.sync.wake_key(key.id))
        key.updated_at = time.time()
        self.state.put_key(key)
        row = self._key_row(key)
        del row["id"]
        return [o.KeySet(key.id, row)]  # an UPDATE: a key deleted meanwhile stays deleted

    def _restore_key(self, key: ProviderKey, old: dict) -> None:
        for attr, value in old.items():
            setattr(key, attr, value)
        self.state.keys_version += 1  # routing's pools follow

    def delete_key(self, key: ProviderKey) -> list:
        self.state.drop_key(key.id)
        return [o.KeyDelete(key.id)]
