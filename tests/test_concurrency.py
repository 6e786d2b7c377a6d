"""Many requests at once on one account: money adds up exactly, reservations return to 0."""

from __future__ import annotations

import asyncio

from tests.fakes import add_user, chat, ready

pytest_plugins = ["tests.fakes_fixtures"]

N = 150


async def test_concurrent_requests_on_one_account_add_up(make_gateway, upstream):
    api = await ready(make_gateway, upstream, account_max_inflight=N)  # all at once
    uid, key = await add_user(api, credit=20)
    acc = api.gw.state.accounts[uid]
    before = api.gw.ledger.balance_n(acc)

    async def one(i: int):
        body = chat("gpt-4o", stream=i % 2 == 0, max_tokens=50)
        return await api.post(
            "/v1/chat/completions", body, key=key, headers={"x-fake-chunks": str(i % 7 + 1)}
        )

    replies = await asyncio.gather(*(one(i) for i in range(N)))
    assert [r.status for r in replies] == [200] * N
    await api.gw.store.flush()
    rows = await api.gw.store.fetchone(
        "SELECT COUNT(*), SUM(cost_n), SUM(completion_tokens) FROM usage WHERE account_id = ?",
        (uid,),
    )
    assert rows[0] == N
    assert before - api.gw.ledger.balance_n(acc) == rows[1]
    assert rows[2] == sum(5 if i % 2 else i % 7 + 1 for i in range(N))
    assert acc.reserved_n == 0 and api.gw.streams_open == 0
    assert api.gw.relay.inflight == 0
    audit = await api.gw.ledger.audit(api.gw.store)
    assert audit["ok"], audit
    held = await api.gw.store.scalar(
        "SELECT SUM(remaining_n) FROM grants WHERE account_id = ?", (uid,)
    )
    assert held == api.gw.ledger.balance_n(acc)  # memory and the store agree


async def test_concurrency_never_drains_below_the_floor(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    # 2.0 credit, floor 1.0: each request reserves ~0.1 (gpt-4o, 10000 max tokens), so about ten fit.
    uid, key = await add_user(api, credit=2)
    body = chat("gpt-4o", max_tokens=10_000)
    headers = {"x-fake-delay": "0"}
    replies = await asyncio.gather(
        *(api.post("/v1/chat/completions", body, key=key, headers=headers) for _ in range(40))
    )
    codes = sorted({r.status for r in replies})
    assert 403 in codes and 200 in codes
    assert all(r.error_code == "insufficient_balance" for r in replies if r.status == 403)
    acc = api.gw.state.accounts[uid]
    assert acc.reserved_n == 0
    assert api.gw.ledger.balance_n(acc) >= api.gw.ledger.to_n(1.0, acc.rates)
