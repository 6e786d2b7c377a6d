"""Idempotency-Key: replays apply nothing twice, a changed body is 409, duplicates never race."""

import asyncio

from tests.helpers import start_gateway
from tests.plugins.test_users import new_user
from xaiproxy import idempotency, ledger

BODY = {"Name": "idem-user", "Email": "idem@example.com", "CreditGranted": 10}


def key(k: str) -> dict:
    return {"headers": {"Idempotency-Key": k}}


async def test_create_replays_without_the_secret(api):
    first = await api.post("/x-users", BODY, **key("create-1"))
    assert first.status == 200
    again = await api.post("/x-users", BODY, **key("create-1"))
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.body["User"]["ID"] == first.body["User"]["ID"]
    assert again.body["User"]["Updates"] == first.body["User"]["Updates"]
    # the secret is shown once: never stored, never replayed
    secret = first.body["User"]["SecretKey"]
    assert again.body["User"]["SecretKey"] != secret
    row = await api.gw.store.fetchone("SELECT * FROM idempotency")
    assert secret not in bytes(row["response"]).decode()
    assert len(api.gw.state.accounts) == 2
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM op_logs WHERE action='add_user'") == 1


async def test_same_key_other_body_is_409(api):
    assert (await api.post("/x-users", BODY, **key("k1"))).status == 200
    r = await api.post("/x-users", BODY | {"CreditGranted": 11}, **key("k1"))
    assert r.status == 409 and r.body["error"]["code"] == "idempotency_conflict"
    uid = api.gw.state.by_name["idem-user"].id
    r = await api.put(f"/x-users/{uid}", {"CreditGranted": 10}, **key("k1"))
    assert r.status == 409  # same body bytes would not matter: the path differs
    assert ledger.balance(api.gw.state.accounts[uid]) == 10


async def test_concurrent_duplicates_apply_once(api):
    uid, _ = await new_user(api, "target-acc", 10)
    calls = [api.put(f"/x-users/{uid}", {"CreditGranted": 5}, **key("dup")) for _ in range(30)]
    replies = await asyncio.gather(*calls)
    assert {r.status for r in replies} == {200}
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in replies) == 29
    assert ledger.balance(api.gw.state.accounts[uid]) == 15
    assert (
        await api.gw.store.scalar("SELECT COUNT(*) FROM grants WHERE account_id = ?", (uid,)) == 2
    )
    # other keys still apply
    assert (await api.put(f"/x-users/{uid}", {"CreditGranted": 5}, **key("dup2"))).status == 200
    assert ledger.balance(api.gw.state.accounts[uid]) == 20


async def test_refunds_and_deletes_are_guarded(api):
    uid, _ = await new_user(api, "target-acc", 10)
    for _ in range(3):
        r = await api.put(f"/x-users/{uid}", {"CreditGranted": -2}, **key("refund"))
        assert r.status == 200
    assert ledger.balance(api.gw.state.accounts[uid]) == 8
    first = await api.delete(f"/x-users/{uid}", **key("del"))
    again = await api.delete(f"/x-users/{uid}", **key("del"))
    assert first.status == again.status == 200 and again.body == first.body
    assert (await api.delete(f"/x-users/{uid}")).status == 404


async def test_keys_are_per_caller(api):
    pid, pkey = await new_user(api, "payer-acc", 100)
    kid, _ = await new_user(api, "kid-acc", 5, key=pkey)
    assert (await api.put(f"/x-users/{kid}", {"CreditGranted": 1}, **key("same"))).status == 200
    r = await api.put(f"/x-users/{kid}", {"CreditGranted": 1}, key=pkey, **key("same"))
    assert r.status == 200 and "Idempotent-Replayed" not in r.headers
    assert ledger.balance(api.gw.state.accounts[kid]) == 7


async def test_refused_calls_are_not_recorded(api):
    pid, pkey = await new_user(api, "payer-acc", 30)
    body = {"Name": "kid-acc", "Email": "k@example.com", "CreditGranted": 40}
    r = await api.post("/x-users", body, key=pkey, **key("retry"))
    assert r.status == 403
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM idempotency") == 0
    assert (await api.put(f"/x-users/{pid}", {"CreditGranted": 100})).status == 200
    r = await api.post("/x-users", body, key=pkey, **key("retry"))
    assert r.status == 200 and "Idempotent-Replayed" not in r.headers


async def test_bad_keys(api):
    uid, _ = await new_user(api, "target-acc", 10)
    for bad in ("has space", "x" * 201, "tab\tkey"):
        r = await api.put(f"/x-users/{uid}", {"CreditGranted": 1}, **key(bad))
        assert r.status == 400 and r.body["error"]["code"] == "invalid_idempotency_key"
    assert ledger.balance(api.gw.state.accounts[uid]) == 10


async def test_record_survives_a_restart(aiohttp_server, tmp_path):
    path = tmp_path / "idem.db"
    api = await start_gateway(aiohttp_server, path)
    uid, _ = await new_user(api, "target-acc", 10)
    first = await api.put(f"/x-users/{uid}", {"CreditGranted": 5}, **key("persist"))
    await api.close()
    api = await start_gateway(aiohttp_server, path)
    try:
        again = await api.put(f"/x-users/{uid}", {"CreditGranted": 5}, **key("persist"))
        assert again.headers["Idempotent-Replayed"] == "true" and again.body == first.body
        assert ledger.balance(api.gw.state.accounts[uid]) == 15
    finally:
        await api.close()


async def test_records_expire_after_the_ttl_and_are_pruned_at_start(aiohttp_server, tmp_path):
    path = tmp_path / "ttl.db"
    api = await start_gateway(aiohttp_server, path)
    uid, _ = await new_user(api, "ttl-target", 10)
    assert (await api.put(f"/x-users/{uid}", {"CreditGranted": 5}, **key("old"))).status == 200
    # Age the record past the TTL: the same key now starts a new movement.
    await api.gw.store.write(
        [("UPDATE idempotency SET created_at = created_at - ?", (idempotency.TTL + 1,))]
    )
    again = await api.put(f"/x-users/{uid}", {"CreditGranted": 5}, **key("old"))
    assert again.status == 200 and "Idempotent-Replayed" not in again.headers
    assert ledger.balance(api.gw.state.accounts[uid]) == 20
    await api.gw.store.write(
        [("UPDATE idempotency SET created_at = created_at - ?", (idempotency.TTL + 1,))]
    )
    await api.close()
    api = await start_gateway(aiohttp_server, path)
    try:
        assert await api.gw.store.scalar("SELECT COUNT(*) FROM idempotency") == 0
    finally:
        await api.close()


async def test_records_are_pruned_while_running_not_only_at_start(api):
    uid, _ = await new_user(api, "prune-target", 10)
    assert (await api.put(f"/x-users/{uid}", {"CreditGranted": 5}, **key("aged"))).status == 200
    await api.gw.store.write(
        [("UPDATE idempotency SET created_at = created_at - ?", (idempotency.TTL + 1,))]
    )
    api.gw.idempotency.pruned_at -= idempotency.PRUNE_EVERY + 1  # an hour has gone by
    assert (await api.put(f"/x-users/{uid}", {"CreditGranted": 5}, **key("new"))).status == 200
    await api.gw.store.flush()
    keys = [r[0] for r in await api.gw.store.fetchall("SELECT key FROM idempotency")]
    assert keys == ["new"]
