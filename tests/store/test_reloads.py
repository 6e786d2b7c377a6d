"""The store reads instances use to follow each other (SPEC 12): one thing at a time, in
the bulk loads' row shapes, and blocks of ids no two instances share."""

from __future__ import annotations

import asyncio

import pytest

from tests.store.test_contract import account, key_row, tree
from xaiproxy.store import ops as o


async def test_one_account_its_grants_one_key_one_config(store):
    await tree(store)
    await store.write(
        [
            o.GrantPut(1, 2, 10, 10, 1.0, 4e9),
            o.GrantPut(2, 3, 10, 10, 1.0, 4e9),
            o.GrantPut(3, 2, 10, 10, 1.0, 2.0),  # expired
            o.GrantPut(4, 2, 10, 10, 1.0, 3e9),
            o.KeyPut(key_row(7, "a")),
            o.ConfigSet(1, 3, {"A": "1"}),
        ]
    )
    bulk = {r["id"]: r for r in await store.load_accounts()}
    assert await store.load_account(2) == bulk[2] == account(2, 1, ".1.2.")
    assert await store.load_account(99) is None
    grants = await store.load_account_grants(2, 100.0)
    assert [g["id"] for g in grants] == [4, 1]  # live only, soonest expiry first
    assert grants == [g for g in await store.load_grants(100.0) if g["account_id"] == 2]
    assert await store.load_key(7) == (await store.load_keys())[0]
    assert await store.load_key(8) is None
    assert await store.load_config(1) == (3, {"A": "1"})
    assert await store.load_config(2) == (0, {})


async def test_id_blocks_start_above_every_used_id_and_never_overlap(make_store):
    first = await make_store()
    second = await make_store(again=first)  # a second instance on the same database
    await tree(first)
    await first.write([o.OpLog(1.0, 1, 12, "add_key", "")])
    blocks = await asyncio.gather(
        *(s.id_block(t) for s in (first, second) * 5 for t in ("accounts", "provider_keys"))
    )
    names = ("accounts", "provider_keys") * 10
    for table, low in (("accounts", 3), ("provider_keys", 12)):
        mine = sorted(b for b, t in zip(blocks, names, strict=True) if t == table)
        assert mine[0][0] > low and all(lo <= hi for lo, hi in mine)
        assert all(a[1] < b[0] for a, b in zip(mine, mine[1:], strict=False))  # disjoint
    with pytest.raises(ValueError):
        await first.id_block("no such; table")
