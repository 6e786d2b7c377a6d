"""Deleting an account with requests in flight, or in debt, with the money in Redis: the
same rule as in memory (SPEC 4), so the same tests, on gateways whose money is in Redis;
and across two instances (one SQLite file, one Redis), where only Redis knows the holds."""

import asyncio

import pytest

from tests import test_delete_inflight as memory
from tests.fakes import add_key, chat
from tests.plugins.test_users import new_user
from xaiproxy import ledger
from xaiproxy.testing import start_gateway

pytest_plugins = ["tests.fakes_fixtures"]
CHAT = "/v1/chat/completions"


@pytest.fixture
def make_gateway(make_gateway, redis_url):
    async def make(**settings):
        api = await make_gateway(redis=redis_url, **settings)
        flush = api.gw.store.flush

        async def settled_flush():  # the tests flush the store: settle in Redis first
            await api.gw.shared.drain()
            await flush()

        api.gw.store.flush = settled_flush
        return api

    return make


test_delete_mid_stream_keeps_the_reservation = memory.test_delete_mid_stream_keeps_the_reservation
test_debt_of_a_stream_is_charged_to_the_parent = (
    memory.test_debt_of_a_stream_is_charged_to_the_parent
)
test_debt_is_charged_on_delete = memory.test_debt_is_charged_on_delete
test_an_expired_grant_never_forgives_debt = memory.test_an_expired_grant_never_forgives_debt


async def redis_holds(api, uid: int) -> tuple[int, int]:
    return await api.gw.hot.balance(uid)


async def store_held(api, uid: int) -> int:
    sql = "SELECT COALESCE(SUM(remaining_n), 0) FROM grants WHERE account_id = ?"
    return int(await api.gw.store.scalar(sql, (uid,)))


@pytest.mark.parametrize("usage", [{}, memory.huge_answer()], ids=["rest", "debt"])
async def test_delete_while_another_instance_streams(tmp_path, upstream, redis_url, usage):
    """Deleted on A while B streams for it: A refunds the balance less B's holds (from
    Redis), B's last request out settles the rest (or the debt) with the parent."""
    db = tmp_path / "shared.db"
    a = await start_gateway(db, redis=redis_url, account_max_inflight=100)
    b = None
    try:
        await add_key(a, upstream)
        pid, pkey = await new_user(a, "payer-x", 300)
        cid, ckey = await new_user(a, "child-x", 50, key=pkey)
        b = await start_gateway(db, redis=redis_url, account_max_inflight=100)
        body = chat(stream=True, max_tokens=1_000_000)  # about $0.6 held each
        slow = {**memory.SLOW, **usage}
        flying = [
            asyncio.ensure_future(b.post(CHAT, body, key=ckey, headers=slow)) for _ in range(3)
        ]
        for _ in range(500):
            if (await redis_holds(a, cid))[1]:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        balance, reserved = await redis_holds(a, cid)
        assert reserved > 10**9 and a.gw.state.accounts[cid].reserved_n == 0  # B's, not A's
        r = await a.delete(f"/x-users/{cid}", key=pkey)
        assert r.status == 200, r.body  # was 409 requests_in_flight
        refunded = (balance - reserved) / 10**9 - memory.FEE
        assert r.body["User"]["Refunded"] == pytest.approx(refunded, abs=1e-6)
        assert not any(f.done() for f in flying)
        for reply in await asyncio.gather(*flying):
            assert reply.status == 200 and b"[DONE]" in reply.raw
        for _ in range(300):  # B's last request out settles the rest with the parent
            if await redis_holds(a, cid) == (0, 0) and not b.gw.shared.plane.inheriting:
                break
            await asyncio.sleep(0.02)
        assert await redis_holds(a, cid) == (0, 0)
        for api in (a, b):
            await api.gw.shared.drain()
            await api.gw.store.flush()
        cost = int(
            await a.gw.store.scalar("SELECT SUM(cost_n) FROM usage WHERE account_id = ?", (cid,))
        )
        assert cost > (5 * 10**9 if usage else 0)
        parent_n = 300 * 10**9 - cost - memory.FEE * 10**9
        assert (await redis_holds(a, pid))[0] == await store_held(a, pid) == parent_n
        assert await store_held(a, cid) == 0
        assert (await ledger.audit(a.gw.store))["ok"]
    finally:
        if b is not None:
            await b.close()
        await a.close()
