"""Start-up: load the in-memory state from the store, and create root on a fresh database."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time

import orjson

from . import credentials, ledger, months, sync, vendors
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


async def load(gw) -> str | None:
    """Fill gw.state from the store. Returns root's key when it was generated just now."""
    store, state = gw.store, gw.state
    if gw.hot is not None:  # instances share the database: ids in blocks, changes followed
        gw.sync = sync.Sync(gw)
        await gw.sync.begin()
    new_root_key = await _first_start(gw)  # and the secret box
    for row in await store.load_accounts():
        state.add_account(Account(**account_values(row)))
    now = time.time()
    for row in await store.load_grants(now):
        acc = state.accounts.get(row["account_id"])
        if acc is not None:
            acc.grants.append(Grant(**row))
    month, start = months.start(now)
    day = int(start // 86400)
    ledger.load_month_spend(
        state, month, await store.spend_since(day), await store.spend_by_dna_since(day)
    )
    await _load_keys(gw)
    await _load_configs(gw)
    await gw.objects.load()
    # Ids are never reused: deleted accounts and keys live on in usage and grants.
    for table, max_id in (await store.max_ids()).items():
        state.seed_id(table, max_id)
    if gw.sync is not None:
        await gw.sync.start()
    return new_root_key


def account_values(row: dict) -> dict:
    """An account row as Account's fields."""
    values = {c: row[c] for c in ACCOUNT_COLUMNS}
    for column in JSON_COLUMNS:
        values[column] = orjson.loads(values[column] or "{}")
    for column in BOOL_COLUMNS:
        values[column] = bool(values[column])
    return values


def open_key(box: credentials.SecretBox, row: dict) -> ProviderKey:
    """A provider key row as a ProviderKey, its secret and Config opened."""
    values = {c: row[c] for c in KEY_COLUMNS}
    values["secret"] = box.open(values["secret"])
    values["status"] = bool(values["status"])
    values["config"] = box.open_config(orjson.loads(values["config"] or "{}"))
    values["type"] = values["type"] or vendors.infer(values["provider"])
    return ProviderKey(**values)


async def _first_start(gw) -> str | None:
    """Open the secret box; root's new key when the database has no account yet (root is
    created now). Instances starting together on a fresh database take turns: one makes
    root and the box's salt, the others read them."""
    async with contextlib.AsyncExitStack() as stack:
        if gw.sync is not None:
            await stack.enter_async_context(gw.sync.locked("boot"))
        gw.box = await _open_box(gw)
        return None if await gw.store.count_accounts() else await _create_root(gw)


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
    box = gw.box
    reseal = []
    for row in await gw.store.load_keys():
        stored, config = row["secret"], orjson.loads(row["config"] or "{}")
        key = open_key(box, row)
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
