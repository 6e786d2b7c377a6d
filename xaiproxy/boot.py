"""Start-up: load the in-memory state from the store, and create root on a fresh database."""

from __future__ import annotations

import logging
import secrets
import time
from datetime import UTC, datetime

import orjson

from . import credentials, vendors
from .ownerconf import OwnerConfig
from .state import (
    ACCOUNT_COLUMNS,
    BOOL_COLUMNS,
    JSON_COLUMNS,
    KEY_COLUMNS,
    Account,
    Grant,
    ProviderKey,
)
from .store import ops as o
from .store.ops import AccountPut

log = logging.getLogger("xaiproxy.boot")


def month_start(now: float | None = None) -> tuple[str, float]:
    dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    start = dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.strftime("%Y-%m"), start.timestamp()


async def load(gw) -> str | None:
    """Fill gw.state from the store. Returns root's key when it was generated just now."""
    store, state = gw.store, gw.state
    new_root_key = None
    if not await store.count_accounts():
        new_root_key = await _create_root(gw)
    for row in await store.load_accounts():
        values = {c: row[c] for c in ACCOUNT_COLUMNS}
        for column in JSON_COLUMNS:
            values[column] = orjson.loads(values[column] or "{}")
        for column in BOOL_COLUMNS:
            values[column] = bool(values[column])
        state.add_account(Account(**values))
    now = time.time()
    for row in await store.load_grants(now):
        acc = state.accounts.get(row["account_id"])
        if acc is not None:
            acc.grants.append(Grant(**row))
    month, start = month_start(now)
    # Month spend from the daily rollup, valued at each account's current Rates.
    for account_id, spent_n in await store.spend_since(int(start // 86400)):
        acc = state.accounts.get(account_id)
        if acc is not None:
            acc.month, acc.month_spend = month, spent_n * acc.rates / 1e9
    _load_tree_spend(state, month, await store.spend_by_dna_since(int(start // 86400)))
    await _load_keys(gw)
    await _load_configs(gw)
    await gw.objects.load()
    # Ids are never reused: deleted accounts and keys live on in usage and grants.
    for table, max_id in (await store.max_ids()).items():
        state.seed_id(table, max_id)
    return new_root_key


def _load_tree_spend(state, month: str, rows) -> None:
    """HardLimit counts a subtree: each account's month spend includes all below it."""
    for acc in state.accounts.values():
        acc.tree_month = month
    for dna, spent_n in rows:
        for part in dna.strip(".").split("."):
            acc = state.accounts.get(int(part)) if part.isdigit() else None
            if acc is not None:
                acc.tree_spend_n += spent_n


async def _open_box(gw) -> credentials.SecretBox:
    """The secret box, its scrypt salt read from the store (made on the first start)."""
    if not gw.settings.secret_key:
        return credentials.SecretBox("")
    salt = await gw.store.meta_get("box_salt")
    if salt is None:
        salt = secrets.token_hex(16)
        await gw.store.write([o.MetaPut("box_salt", salt)])
    return credentials.SecretBox(gw.settings.secret_key, bytes.fromhex(salt))


async def _load_keys(gw) -> None:
    """Provider keys, opened; any sealed the old way (or not at all) is sealed again now."""
    box = gw.box = await _open_box(gw)
    reseal = []
    for row in await gw.store.load_keys():
        values = {c: row[c] for c in KEY_COLUMNS}
        stored, config = values["secret"], orjson.loads(values["config"] or "{}")
        values["secret"] = box.open(stored)
        values["status"] = bool(values["status"])
        values["config"] = box.open_config(config)
        values["type"] = values["type"] or vendors.infer(values["provider"])
        key = ProviderKey(**values)
        gw.state.put_key(key)
        if box.stale(stored) or box.config_stale(config):
            sealed = orjson.dumps(box.seal_config(key.config)).decode()
            reseal.append(o.KeySet(key.id, {"secret": box.seal(key.secret), "config": sealed}))
    if reseal:
        await gw.store.write(reseal)
        log.info("sealed %d provider keys with the current secret box", len(reseal))


async def _load_configs(gw) -> None:
    versions, texts = await gw.store.load_configs()
    values = {owner: {k: orjson.loads(v) for k, v in kv.items()} for owner, kv in texts.items()}
    for owner_id in set(versions) | set(values):
        gw.state.configs[owner_id] = OwnerConfig.build(
            owner_id, versions.get(owner_id, 0), values.get(owner_id, {}), gw.prices
        )


async def _create_root(gw) -> str | None:
    given = gw.settings.root_key
    key = given or credentials.generate_key()
    now = time.time()
    root = Account(
        id=1,
        name="root",
        email="root@localhost",
        alias="root",
        dna=".1.",
        level=0,
        key_hash=credentials.hash_key(key),
        key_prefix=credentials.display_prefix(key),
        owner=True,
        created_at=now,
        updated_at=now,
    )
    await gw.store.write([AccountPut(root.row())])
    log.info("created the root account")
    return None if given else key
