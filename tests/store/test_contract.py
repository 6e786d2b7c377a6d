"""What every store backend must do: typed ops in, the same answers out of the named reads."""

from __future__ import annotations

import time

import pytest

from xaiproxy.state import Account, ProviderKey
from xaiproxy.store import ops as o

DAY = 86400


def account(id_: int, parent: int | None, dna: str, name: str | None = None) -> dict:
    name = name or f"user-{id_}"
    acc = Account(
        id=id_,
        name=name,
        email=f"{name}@example.com",
        key_hash=f"hash-{id_}",
        key_prefix="sk-Xvs…",
        dna=dna,
        level=dna.count(".") - 2,
        parent_id=parent,
        model_limits={"gpt*": {"rpm": 3}},
        created_at=1.0,
        updated_at=1.0,
    )
    return acc.row()


def usage(account_id: int, dna: str, ts: float, cost_n: int, model: str = "m") -> o.UsageRecord:
    return o.UsageRecord(
        ts, account_id, 1, dna, model, model, 1, 0, "/v1/chat/completions", 10, 5, 2,
        cost_n / 1e9, cost_n, 200, 1.0, 0, f"req-{account_id}-{ts}",
    )  # fmt: skip


async def tree(store) -> None:
    await store.write(
        [
            o.AccountPut(account(1, None, ".1.", "root")),
            o.AccountPut(account(2, 1, ".1.2.")),
            o.AccountPut(account(3, 2, ".1.2.3.")),
        ]
    )


# -- accounts ---------------------------------------------------------------------
async def test_accounts_round_trip(store):
    assert await store.count_accounts() == 0
    await tree(store)
    rows = await store.load_accounts()
    assert [r["id"] for r in rows] == [1, 2, 3]  # parents before children
    assert rows[2] == account(3, 2, ".1.2.3.")


async def test_account_set_and_delete(store):
    await tree(store)
    await store.write([o.AccountSet(2, {"rpm": 60, "alias": "two"}), o.AccountDelete(3)])
    rows = {r["id"]: r for r in await store.load_accounts()}
    assert (rows[2]["rpm"], rows[2]["alias"]) == (60, "two") and 3 not in rows


async def test_account_move_carries_its_usage(store):
    await tree(store)
    now = time.time()
    store.submit_usage(usage(3, ".1.2.3.", now, 7), [])
    await store.flush()
    await store.write([o.AccountDelete(2), o.AccountMove(3, 1, ".1.3.", 1)])
    row = next(r for r in await store.load_accounts() if r["id"] == 3)
    assert (row["parent_id"], row["dna"], row["level"]) == (1, ".1.3.", 1)
    day = int(now // DAY)
    assert await store.usage_by_account(o.Scope(dna=".1.3."), day, day + 1) == [(3, 1, 7)]
    assert await store.usage_by_account(o.Scope(dna=".1.2."), day, day + 1) == []


# -- units ------------------------------------------------------------------------
async def test_a_failed_unit_changes_nothing_and_spares_the_others(store):
    await tree(store)
    good = store.submit([o.AccountSet(2, {"alias": "kept"})], wait=True)
    bad = store.submit(
        [o.AccountSet(3, {"alias": "lost"}), o.AccountPut(account(2, 1, ".1.2.", "dup"))],
        wait=True,
    )
    await good
    with pytest.raises(Exception):  # noqa: B017 - each backend raises its own error
        await bad
    rows = {r["id"]: r for r in await store.load_accounts()}
    assert rows[2]["alias"] == "kept" and rows[3]["alias"] == ""
    assert store.write_errors == 1


async def test_close_commits_what_is_queued(make_store):
    first = await make_store()
    await tree(first)
    first.submit([o.AccountSet(2, {"alias": "late"})])
    await first.close()
    again = await make_store(again=first)
    assert {r["id"]: r["alias"] for r in await again.load_accounts()}[2] == "late"


# -- money --------------------------------------------------------------------------
async def test_grants_deltas_and_usage_fast_lane(store):
    await tree(store)
    now = time.time()
    await store.write(
        [
            o.GrantPut(1, 2, 100, 100, now, now + DAY, "initial"),
            o.GrantPut(2, 2, 50, 50, now - 2 * DAY, now - DAY, "expired"),
            o.GrantPut(3, 3, 0, 0, now, now + DAY, "empty"),
            o.Transfer(now, 1, 2, 150, 0, "initial", 1),
        ]
    )
    await store.write([o.GrantDelta(1, 30)])
    store.submit_usage(usage(2, ".1.2.", now, 20), [o.GrantDelta(1, 20), o.GrantDelta(3, 5)])
    await store.flush()
    grants = {g["id"]: g for g in await store.load_grants(now)}
    # Live ones with something left, and debt (negative) whatever its expiry.
    assert {i: g["remaining_n"] for i, g in grants.items()} == {1: 50, 3: -5}
    assert grants[1]["reference"] == "initial" and grants[1]["amount_n"] == 100
    assert await store.audit_totals() == {
        "minted_n": 150,
        "returned_n": 0,
        "held_n": 95,
        "spent_n": 20,
        "fees_n": 0,
    }


async def test_usage_reports(store):
    await tree(store)
    d = int(time.time() // DAY)
    for rec in (
        usage(2, ".1.2.", d * DAY + 10, 100, "a"),
        usage(2, ".1.2.", d * DAY + 20, 50, "b"),
        usage(3, ".1.2.3.", d * DAY + 30, 25, "a"),
        usage(3, ".1.2.3.", (d - 1) * DAY + 5, 1, "a"),
    ):
        store.submit_usage(rec, [])
    await store.flush()
    assert await store.usage_by_day(o.ALL, d, d + 1) == [
        (d, "a", 2, 20, 10, 4, 125),
        (d, "b", 1, 10, 5, 2, 50),
    ]
    assert await store.usage_by_day(o.Scope(account_ids=(3,)), d - 1, d + 1) == [
        (d - 1, "a", 1, 10, 5, 2, 1),
        (d, "a", 1, 10, 5, 2, 25),
    ]
    by_account = sorted(await store.usage_by_account(o.Scope(dna=".1.2."), d - 1, d + 1))
    assert by_account == [(2, 2, 150), (3, 2, 26)]
    assert await store.usage_totals(3, d) == (1, 10, 5, 2, 25)
    assert await store.usage_totals(1, d) == (0, None, None, None, None)
    assert sorted(await store.spend_since(d - 1)) == [(2, 150), (3, 26)]
    assert sorted(await store.spend_by_dna_since(d)) == [(".1.2.", 150), (".1.2.3.", 25)]


# -- provider keys, config, logs ---------------------------------------------------------
def key_row(id_: int, name: str) -> dict:
    k = ProviderKey(id_, 1, "https://api.example.com", "sealed", name=name, created_at=1.0)
    cols = ("id", "owner_id", "name", "level", "provider", "secret", "status", "config")
    row = {c: getattr(k, c) for c in cols} | {"status": 1, "config": "{}"}
    return row | {"sleep_until": 0.0, "sleep_reason": "", "created_at": 1.0, "updated_at": 1.0}


async def test_provider_keys(store):
    await store.write([o.KeyPut(key_row(1, "a")), o.KeyPut(key_row(2, "b"))])
    await store.write([o.KeyPut(key_row(1, "renamed")), o.KeySleep(2, 99.0, "429")])
    keys = {k["id"]: k for k in await store.load_keys()}
    assert keys[1]["name"] == "renamed" and keys[1]["secret"] == "sealed"
    assert (keys[2]["sleep_until"], keys[2]["sleep_reason"]) == (99.0, "429")
    await store.write([o.KeyDelete(1)])
    assert [k["id"] for k in await store.load_keys()] == [2]


async def test_config_set_replaces_the_whole_config(store):
    await store.write([o.ConfigSet(5, 1, {"A": "1", "B": '"x"'})])
    await store.write([o.ConfigSet(5, 2, {"B": '"y"'}), o.ConfigSet(6, 1, {})])
    assert await store.load_configs() == ({5: 2, 6: 1}, {5: {"B": '"y"'}})


async def test_op_logs_filter_and_page(store):
    await store.write(
        [
            o.OpLog(1.0, 2, 3, "add_user", "made 3"),
            o.OpLog(2.0, 1, 2, "update_user", "changed 2"),
            o.OpLog(3.0, 1, 2, "add_key", "a key whose id is 2"),
            o.OpLog(4.0, 1, 4, "add_user", "someone else", "failed"),
        ]
    )
    actions = ("add_user", "update_user")
    total, rows = await store.op_logs(2, actions, {}, 10, 0)
    assert total == 2 and [r["details"] for r in rows] == ["changed 2", "made 3"]
    assert set(rows[0]) == {"id", "ts", "action", "operator_id", "target_id", "details", "status"}
    total, rows = await store.op_logs(2, actions, {}, 1, 1)
    assert total == 2 and [r["action"] for r in rows] == ["add_user"]
    total, rows = await store.op_logs(1, actions, {"status": "failed", "target_id": 4}, 10, 0)
    assert total == 1 and rows[0]["details"] == "someone else"


async def test_ids_are_never_reused(store):
    await tree(store)
    store.submit_usage(usage(9, ".1.9.", time.time(), 1), [])
    await store.write([o.OpLog(1.0, 1, 12, "add_key", "level 1")])
    ids = await store.max_ids()
    assert (ids["accounts"], ids["provider_keys"]) == (9, 12)
    assert ids["grants"] == 0


# -- idempotency, news, alerts ----------------------------------------------------------
async def test_idempotency_records(store):
    await store.write([o.IdempotencyPut(2, "k1", "fp", 200, b'{"a":1}', 100.0)])
    assert await store.idempotency_get(2, "k1", 50.0) == {
        "fingerprint": "fp",
        "status": 200,
        "response": b'{"a":1}',
    }
    assert await store.idempotency_get(2, "k1", 100.0) is None  # too old
    assert await store.idempotency_get(3, "k1", 0.0) is None  # scoped to the account
    await store.write([o.IdempotencyPrune(100.0)])
    assert await store.idempotency_get(2, "k1", 0.0) is None


# -- plugin tables: declared as data, generic row ops ----------------------------------
NOTES = o.Table(
    "notes",
    (
        o.Column("id", "int"),
        o.Column("author", "int"),
        o.Column("tag", "text", null=True),
        o.Column("at", "float"),
        o.Column("extra", "json", default={}),
        o.Column("seen", "bool", default=False),
    ),
    primary_key=("id",),
    indexes=(("author", "at"),),
)


def note(id_, author, tag, at, **more):
    return {"id": id_, "author": author, "tag": tag, "at": at} | more


async def test_plugin_tables_are_created_once_and_versioned(make_store):
    store = await make_store()
    assert await store.migrate_plugin("notes", [NOTES]) == [1]
    await store.write([o.RowInsert("notes", note(1, 7, "a", 1.0))])
    await store.close()
    store = await make_store(again=store)
    steps = [NOTES, o.AddColumn("notes", o.Column("score", "int", default=5))]
    assert await store.migrate_plugin("notes", steps) == [2]
    assert await store.migrate_plugin("notes", steps) == []
    (row,) = await store.rows("notes")
    assert row == note(1, 7, "a", 1.0, extra={}, seen=False, score=5)
    with pytest.raises(ValueError, match="at version 2, the plugin knows 1"):
        await store.migrate_plugin("notes", [NOTES])


async def test_a_plugin_table_that_exists_is_adopted(store):
    """A first step may declare a table an older schema made (CREATE IF NOT EXISTS)."""
    assert await store.migrate_plugin("a", [NOTES]) == [1]
    await store.write([o.RowInsert("notes", note(1, 7, None, 1.0))])
    assert await store.migrate_plugin("b", [NOTES]) == [1]
    assert await store.count_rows("notes") == 1


async def test_plugin_table_rows(store):
    await store.migrate_plugin("notes", [NOTES])
    await store.write(
        [
            o.RowInsert("notes", note(1, 7, None, 1.0, extra={"k": [1]}, seen=True)),
            o.RowInsert("notes", note(2, 7, "x", 2.0)),
            o.RowInsert("notes", note(3, 8, "y", 3.0)),
            o.RowInsert("notes", note(4, 7, "x", 4.0)),
        ]
    )
    ids = [r["id"] for r in await store.rows("notes", {"author": 7}, ("-at",))]
    assert ids == [4, 2, 1]
    (first,) = await store.rows("notes", {"tag": None})
    assert first["extra"] == {"k": [1]} and first["seen"] is True
    assert [r["id"] for r in await store.rows("notes", {"tag": o.In(("x", "y"))}, ("id",), 2)] == [
        2,
        3,
    ]
    assert await store.count_rows("notes", {"author": 7, "at": o.Gt(1.0)}) == 2
    await store.write(
        [o.RowUpsert("notes", note(2, 9, "z", 2.5)), o.RowDelete("notes", {"at": o.Le(1.0)})]
    )
    assert [(r["id"], r["author"]) for r in await store.rows("notes", order=("id",))] == [
        (2, 9),
        (3, 8),
        (4, 7),
    ]
    await store.write([o.RowDelete("notes", {"id": o.In((3, 4))})])
    assert await store.count_rows("notes") == 1


async def test_plugin_table_ops_name_only_declared_things(store):
    await store.migrate_plugin("notes", [NOTES])
    with pytest.raises(ValueError, match="'other' is not a declared plugin table"):
        store.submit([o.RowInsert("other", {"id": 1})])
    with pytest.raises(ValueError, match="no column 'id; DROP'"):
        store.submit([o.RowDelete("notes", {"id; DROP": 1})])
    with pytest.raises(ValueError, match="no column"):
        await store.rows("notes", order=("-nope",))
    assert await store.count_rows("notes") == 0


async def test_an_unknown_op_is_refused(store):
    class Strange:
        pass

    with pytest.raises(TypeError):
        await store.write([Strange()])
