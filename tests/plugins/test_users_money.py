"""Recharge, refund, Rates, expiry and delete: the arithmetic of moving credit between accounts."""

import asyncio
import time

from tests.plugins.test_users import new_user
from xaiproxy import ledger


def bal(api, uid):
    return ledger.balance(api.gw.state.accounts[uid])


async def ops(api, action):
    return await api.gw.store.fetchall("SELECT * FROM op_logs WHERE action = ?", (action,))


async def test_root_mints(api):
    uid, _ = await new_user(api, "minted", 100)
    row = await api.gw.store.fetchone("SELECT * FROM transfers WHERE to_id = ?", (uid,))
    assert (row["from_id"], row["amount_n"], row["kind"]) == (1, 100 * ledger.NANO, "initial")
    grant = api.gw.state.accounts[uid].grants[0]
    assert abs(grant.expires_at - grant.granted_at - 365 * 86400) < 1


async def test_rates_move_value_at_base_worth(api):
    p, pkey = await new_user(api, "payer-acc", 1000)
    # giving a Rates-1.5 child 150 costs the Rates-1 parent 100
    c, _ = await new_user(api, "rated-kid", 150, key=pkey, Rates=1.5)
    assert (bal(api, p), bal(api, c)) == (900, 150)
    r = await api.put(f"/x-users/{c}", {"CreditGranted": 30, "Days": 30}, key=pkey)
    assert r.status == 200, r.body
    # HardLimit/SoftLimit were derived (10x / 8x CreditGranted), so they follow the recharge
    assert r.body["User"]["Updates"] == {
        "CreditGranted": 30,
        "Balance": 180,
        "HardLimit": 1800,
        "SoftLimit": 1440,
    }
    assert r.body["Parent"]["ID"] == p and r.body["Parent"]["Balance"] == 880
    assert (bal(api, p), bal(api, c)) == (880, 180)
    g = max(api.gw.state.accounts[c].grants, key=lambda g: g.id)
    assert abs(g.expires_at - g.granted_at - 30 * 86400) < 1 and g.reference == "recharge"
    # changing Rates rescales the balance: base worth stays
    r = await api.put(f"/x-users/{c}", {"Rates": 3})
    assert r.status == 200 and bal(api, c) == 360 and bal(api, p) == 880
    assert [row["details"] for row in await ops(api, "recharge_user")] == ["recharged 30"]


async def test_refund_minus_fee_as_180_day_grant(api):
    p, pkey = await new_user(api, "payer-acc", 1000)
    c, _ = await new_user(api, "rated-kid", 150, key=pkey, Rates=1.5)
    r = await api.put(f"/x-users/{c}", {"CreditGranted": -60}, key=pkey)
    assert r.status == 200, r.body
    # 60 at Rates 1.5 is worth 40; the parent gets 40 - 0.2
    assert bal(api, c) == 90 and bal(api, p) == 939.8
    assert r.body["User"]["Updates"]["Refunded"] == 39.8
    assert r.body["Parent"]["Balance"] == 939.8
    refund = [g for g in api.gw.state.accounts[p].grants if g.reference == "refund"][0]
    assert abs(refund.expires_at - refund.granted_at - 180 * 86400) < 1
    t = await api.gw.store.fetchone("SELECT * FROM transfers WHERE kind = 'refund'")
    assert (t["from_id"], t["to_id"], t["fee_n"]) == (c, p, ledger.NANO // 5)
    assert len(await ops(api, "refund_user")) == 1
    assert (await ledger.audit(api.gw.store))["ok"]


async def test_refund_beyond_balance_changes_nothing(api):
    p, pkey = await new_user(api, "payer-acc", 1000)
    c, _ = await new_user(api, "kid-acc", 50, key=pkey)
    count = await api.gw.store.scalar("SELECT COUNT(*) FROM op_logs")
    r = await api.put(f"/x-users/{c}", {"CreditGranted": -50.01, "Gear": 3}, key=pkey)
    assert r.status == 400 and r.body["error"]["code"] == "insufficient_balance"
    assert (bal(api, p), bal(api, c)) == (950, 50)
    assert api.gw.state.accounts[c].gear == 0
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM op_logs") == count
    r = await api.put(f"/x-users/{c}", {"CreditGranted": -50}, key=pkey)
    assert r.status == 200 and bal(api, c) == 0 and bal(api, p) == 999.8


async def test_poor_parent_may_still_refund(api):
    p, pkey = await new_user(api, "poor-acc", 25)
    c, _ = await new_user(api, "poor-kid", 10, key=pkey)
    r = await api.put(f"/x-users/{c}", {"CreditGranted": 1}, key=pkey)
    assert r.status == 403  # 15 < USER_API_BALANCE 20
    r = await api.put(f"/x-users/{c}", {"CreditGranted": -5}, key=pkey)
    assert r.status == 200 and bal(api, p) == 19.8


async def test_recharge_beyond_parent_balance(api):
    p, pkey = await new_user(api, "payer-acc", 100)
    c, _ = await new_user(api, "kid-acc", 50, key=pkey)
    r = await api.put(f"/x-users/{c}", {"CreditGranted": 101, "Rates": 2}, key=pkey)
    assert r.status == 403 and r.body["error"]["code"] == "insufficient_balance"
    acc = api.gw.state.accounts[c]
    assert (acc.rates, bal(api, c), bal(api, p)) == (1.0, 50, 50)
    # in the new Rates 2, 100 is worth 50: that fits exactly
    r = await api.put(f"/x-users/{c}", {"CreditGranted": 100, "Rates": 2}, key=pkey)
    assert r.status == 200 and bal(api, p) == 0 and bal(api, c) == 200


async def test_days_expiry_and_derived_limits_follow(api):
    c, _ = await new_user(api, "expiring", 10)
    acc = api.gw.state.accounts[c]
    assert acc.hard_limit == 100
    r = await api.put(f"/x-users/{c}", {"CreditGranted": 5, "Days": 0.00001})
    assert r.status == 200 and bal(api, c) == 15
    assert (acc.credit_granted, acc.hard_limit, acc.soft_limit) == (15, 150, 120)
    await asyncio.sleep(0.9)
    assert bal(api, c) == 10
    r = await api.get(f"/x-users/{c}")
    assert r.body["Balance"] == 10 and len(r.body["CreditBalance"]) == 1
    assert (await api.put(f"/x-users/{c}", {"Days": 3})).status == 400


async def test_delete_refunds_and_moves_children_up(api):
    p, pkey = await new_user(api, "payer-acc", 1000)
    c, ckey = await new_user(api, "middle-acc", 150, key=pkey, Rates=1.5)
    g, gkey = await new_user(api, "grand-kid", 30, key=ckey)
    gg, _ = await new_user(api, "great-kid", 3, key=gkey)
    now = time.time()
    sql = "INSERT INTO usage (ts, account_id, owner_id, dna, model) VALUES (?, ?, 1, ?, 'm')"
    state = api.gw.state
    await api.gw.store.write([(sql, (now, i, state.accounts[i].dna)) for i in (c, g, gg)])
    # middle holds 150 - 30 (at Rates 1.5 = 20 base) = 120, worth 80; parent gets 79.8
    r = await api.delete(f"/x-users/{c}", key=pkey)
    assert r.status == 200, r.body
    assert r.body["Action"] == "delete" and r.body["User"]["ID"] == c
    assert r.body["Parent"]["ID"] == p and r.body["Parent"]["Balance"] == 979.8
    state = api.gw.state
    assert c not in state.accounts and "middle-acc" not in state.by_name
    assert (state.accounts[g].dna, state.accounts[g].level) == (f".1.{p}.{g}.", 2)
    assert state.accounts[gg].dna == f".1.{p}.{g}.{gg}."
    rows = await api.gw.store.fetchall("SELECT id, parent_id, dna, level FROM accounts ORDER BY id")
    assert [tuple(r) for r in rows][1:] == [
        (p, 1, f".1.{p}.", 1),
        (g, p, f".1.{p}.{g}.", 2),
        (gg, g, f".1.{p}.{g}.{gg}.", 3),
    ]
    usage = await api.gw.store.fetchall("SELECT account_id, dna FROM usage ORDER BY account_id")
    assert [tuple(u) for u in usage] == [
        (c, f".1.{p}.{c}."),
        (g, f".1.{p}.{g}."),
        (gg, f".1.{p}.{g}.{gg}."),
    ]
    assert (await api.get("/x-users", key=gkey)).status == 200  # still works
    assert [u["ID"] for u in (await api.get("/x-users", key=pkey)).body] == [g]
    assert len(await ops(api, "delete_user")) == 1
    assert (await api.get(f"/x-users/{c}")).status == 404
    assert (await ledger.audit(api.gw.store))["ok"]
