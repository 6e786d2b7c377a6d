"""Upstream usage is bad input (SPEC 5): counts outside [0, 2^40] are estimated, never stored.

A tenant's upstream answers with usage 2^64-1 (which once made the shared group commit
raise and roll back everyone's writes) while other accounts are created concurrently;
negative, float, bool and text counts are estimated too and never lower anyone's spend.
"""

import asyncio

import orjson
import pytest

from tests.fakes import add_key, chat
from tests.helpers import start_gateway
from tests.plugins.test_users import new_user
from xaiproxy import ledger

pytest_plugins = ["tests.fakes_fixtures"]
CHAT = "/v1/chat/completions"
HUGE = 2**64 - 1


def usage_header(**counts) -> dict:
    return {"x-fake-usage": orjson.dumps(counts).decode()}


async def tenant(api, fake) -> str:
    """An owner with its own provider key and one funded user; returns the user's key."""
    _, tkey = await new_user(api, "tenant-bad-usage", 500, Owner=True)
    await add_key(api, fake, key=tkey)
    _, ukey = await new_user(api, "tenant-user", 100, key=tkey)
    return ukey


async def test_huge_usage_never_fails_other_writes(aiohttp_server, tmp_path, upstream):
    path = tmp_path / "huge.db"
    api = await start_gateway(aiohttp_server, path)
    try:
        ukey = await tenant(api, upstream)
        calls = []
        for i in range(12):
            calls.append(
                api.post(
                    CHAT,
                    chat(stream=i % 2 == 0),
                    key=ukey,
                    headers=usage_header(completion_tokens=HUGE, prompt_tokens=HUGE),
                )
            )
            body = {"Name": f"bystander-{i}", "Email": f"by{i}@example.com", "CreditGranted": 5}
            calls.append(api.post("/x-users", body))
        replies = await asyncio.gather(*calls)
        assert [r.status for r in replies] == [200] * len(calls), [r.body for r in replies]
        await api.gw.store.flush()
        rows = await api.gw.store.fetchall(
            "SELECT prompt_tokens, completion_tokens, estimated, cost_n FROM usage"
        )
        assert len(rows) == 12
        for prompt, completion, estimated, cost_n in rows:
            assert estimated == 1 and 0 < prompt < 1000 and 0 <= completion < 1000
            assert 0 < cost_n < ledger.NANO
        assert (await ledger.audit(api.gw.store))["ok"]
        assert api.gw.store.write_errors == 0
    finally:
        await api.close()
    again = await start_gateway(aiohttp_server, path)
    try:
        names = {a.name for a in again.gw.state.accounts.values()}
        assert {f"bystander-{i}" for i in range(12)} <= names
        assert (await ledger.audit(again.gw.store))["ok"]
    finally:
        await again.close()


@pytest.mark.parametrize(
    "counts",
    [
        {"completion_tokens": -1_000_000_000},
        {"prompt_tokens": -5, "completion_tokens": 3},
        {"completion_tokens": 2**40 + 1},
        {"completion_tokens": 1.5},
        {"completion_tokens": True},
        {"completion_tokens": "999"},
        {"prompt_tokens_details": {"cached_tokens": -(10**9)}},
    ],
)
async def test_odd_counts_are_estimated_and_never_lower_spend(
    aiohttp_server,
    tmp_path,
    upstream,
    counts,
):
    api = await start_gateway(aiohttp_server, tmp_path / "odd.db")
    try:
        await add_key(api, upstream)
        uid, key = await new_user(api, "odd-usage", 50)
        assert (await api.post(CHAT, chat(), key=key)).status == 200
        before = (await api.get(f"/x-users/{uid}")).body["MonthSpend"]
        assert before > 0
        r = await api.post(CHAT, chat(), key=key, headers=usage_header(**counts))
        assert r.status == 200
        await api.gw.store.flush()
        after = (await api.get(f"/x-users/{uid}")).body
        assert after["MonthSpend"] > before and after["Balance"] < 50
        row = await api.gw.store.fetchone(
            "SELECT estimated, prompt_tokens, completion_tokens, cost_n FROM usage"
            " ORDER BY id DESC LIMIT 1"
        )
        assert row["estimated"] == 1 and row["cost_n"] > 0
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] >= 0
        bill = (await api.get("/x-bill", params={"u": str(uid)})).body
        assert bill["total_usage"]["cost"] > 0
        assert all(u["total_cost"] >= 0 for u in bill["usage_users"])
        assert (await ledger.audit(api.gw.store))["ok"]
    finally:
        await api.close()


async def test_valid_counts_at_the_bound_are_billed(aiohttp_server, tmp_path, upstream):
    api = await start_gateway(aiohttp_server, tmp_path / "bound.db")
    try:
        await add_key(api, upstream)
        uid, key = await new_user(api, "bound-usage", 50)
        r = await api.post(CHAT, chat(), key=key, headers=usage_header(completion_tokens=2**20))
        assert r.status == 200
        await api.gw.store.flush()
        row = await api.gw.store.fetchone("SELECT estimated, completion_tokens FROM usage")
        assert (row["estimated"], row["completion_tokens"]) == (0, 2**20)
    finally:
        await api.close()
