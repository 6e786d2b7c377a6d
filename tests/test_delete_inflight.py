"""Deleting an account while it has requests in flight, or while it owes (SPEC 4).

The delete refunds the balance less what the requests in flight reserved (less the 0.2
fee); the requests settle against the parent; a debt is charged to the parent, never
written off, and an expired grant never forgives it.
"""

import asyncio
import time

import orjson
import pytest

from tests.fakes import add_key, chat
from tests.plugins.test_users import new_user
from xaiproxy import ledger

pytest_plugins = ["tests.fakes_fixtures"]
CHAT = "/v1/chat/completions"
FEE = 0.2
SLOW = {"x-fake-delay": "0.15", "x-fake-chunks": "8"}  # about 1.2 s of stream


def huge_answer(tokens: int = 10_000_000) -> dict:
    """An answer billed far beyond its reservation ($6 at gpt-4o-mini's output price)."""
    return {"x-fake-usage": orjson.dumps({"completion_tokens": tokens}).decode()}


async def setup(make_gateway, fake, credit: float, **fields):
    api = await make_gateway()
    await add_key(api, fake)
    pid, pkey = await new_user(api, "payer-del", 300)
    cid, ckey = await new_user(api, "child-del", credit, key=pkey, **fields)
    return api, api.gw.state.accounts[pid], pkey, api.gw.state.accounts[cid], ckey


async def stream_then_delete(api, pkey, child, ckey, **headers):
    """Start a slow stream as the child, DELETE the child mid-stream; (delete reply, stream)."""
    body = chat(stream=True, max_tokens=1_000_000)  # reserves about $0.6
    task = asyncio.create_task(api.post(CHAT, body, key=ckey, headers={**SLOW, **headers}))
    for _ in range(500):  # until the request holds its reservation
        if child.reserved_n:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # the stream is under way
    reserved = ledger.from_n(child.reserved_n, child.rates)
    deleted = await api.delete(f"/x-users/{child.id}", key=pkey)
    assert deleted.status == 200, deleted.body
    assert not task.done()
    streamed = await task
    assert streamed.status == 200 and b"[DONE]" in streamed.raw
    await api.gw.store.flush()
    return deleted, reserved


async def cost_of(api, child_id: int) -> float:
    cost_n = await api.gw.store.scalar(
        "SELECT SUM(cost_n) FROM usage WHERE account_id = ?", (child_id,)
    )
    return ledger.from_n(cost_n)


async def settled(api, child) -> None:
    assert (await ledger.audit(api.gw.store))["ok"]
    held = await api.gw.store.scalar(
        "SELECT SUM(remaining_n) FROM grants WHERE account_id = ?", (child.id,)
    )
    assert held == 0 and ledger.balance_n(child) == 0  # nothing left behind, nothing owed


async def test_delete_mid_stream_keeps_the_reservation(make_gateway, upstream):
    api, parent, pkey, child, ckey = await setup(make_gateway, upstream, 50)
    deleted, reserved = await stream_then_delete(api, pkey, child, ckey)
    assert reserved > 0.5
    assert deleted.body["User"]["Refunded"] == pytest.approx(50 - reserved - FEE, abs=1e-6)
    cost = await cost_of(api, child.id)
    assert 0 < cost < reserved
    # The parent got everything back but the stream's real cost and the fee.
    assert ledger.balance(parent) == pytest.approx(300 - cost - FEE, abs=1e-6)
    await settled(api, child)


async def test_debt_of_a_stream_is_charged_to_the_parent(make_gateway, upstream):
    api, parent, pkey, child, ckey = await setup(make_gateway, upstream, 5)
    await stream_then_delete(api, pkey, child, ckey, **huge_answer())
    cost = await cost_of(api, child.id)
    assert cost > 5  # more than the child ever held
    assert ledger.balance(parent) == pytest.approx(300 - cost - FEE, abs=1e-6)
    await settled(api, child)


async def test_debt_is_charged_on_delete(make_gateway, upstream):
    api, parent, pkey, child, ckey = await setup(make_gateway, upstream, 5)
    assert (await api.post(CHAT, chat(), key=ckey, headers=huge_answer())).status == 200
    await api.gw.store.flush()  # with Redis (test_shared_delete.py): the settle landed too
    owed = -ledger.balance(child)
    assert owed > 0.9
    r = await api.delete(f"/x-users/{child.id}", key=pkey)
    assert r.status == 200 and r.body["User"]["Refunded"] == 0
    await api.gw.store.flush()
    assert ledger.balance(parent) == pytest.approx(300 - 5 - owed, abs=1e-6)
    await settled(api, child)


async def test_an_expired_grant_never_forgives_debt(make_gateway, upstream):
    api, parent, pkey, child, ckey = await setup(make_gateway, upstream, 5, Days=0.00002)
    assert (await api.post(CHAT, chat(), key=ckey, headers=huge_answer())).status == 200
    await api.gw.store.flush()  # with Redis (test_shared_delete.py): the settle landed too
    owed = -ledger.balance(child)
    assert owed > 0.9
    await asyncio.sleep(max(child.grants[0].expires_at - time.time(), 0) + 0.05)
    r = await api.get(f"/x-users/{child.id}", key=pkey)
    assert r.body["Balance"] == pytest.approx(-owed)
    r = await api.post(CHAT, chat(), key=ckey)
    assert (r.status, r.error_code) == (403, "insufficient_balance")
    assert (await api.delete(f"/x-users/{child.id}", key=pkey)).status == 200
    await api.gw.store.flush()
    assert ledger.balance(parent) == pytest.approx(300 - 5 - owed, abs=1e-6)
    assert (await ledger.audit(api.gw.store))["ok"]
