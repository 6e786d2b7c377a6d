"""Routing: fallback across keys and SWITCH_OVER levels, key sleep, all-fail answers."""

from __future__ import annotations

import time

import pytest

from tests.fakes import (
    add_key,
    chat,
    ready,
    set_config,
)
from xaiproxy.routing import Refused, Router
from xaiproxy.state import ProviderKey

pytest_plugins = ["tests.fakes_fixtures"]

CHAT = "/v1/chat/completions"


def test_switch_over_chain_has_no_loops():
    assert Router.levels({1: 2, 2: 3, 3: 1}, 1) == [1, 2, 3]
    assert Router.levels({}, 4) == [4]
    assert Router.levels({2: 5}, 1) == [1]


async def test_fallback_to_another_key_on_5xx(make_gateway, make_upstream):
    bad, good = await make_upstream(), await make_upstream()
    ended = []
    api = await make_gateway(setup=[lambda gw: gw.hooks.on_request_end.append(ended.append)])
    await add_key(api, bad)
    await add_key(api, good)
    bad.fail(*["500"] * 10)
    for _ in range(4):  # round-robin starts on either key; every request ends on `good`
        r = await api.post(CHAT, chat())
        assert r.status == 200, r.body
    assert len(good.seen) == 4 and len(bad.seen) == 2
    logs = [ctx.attempt_log for ctx in ended]
    assert sorted(len(log) for log in logs) == [1, 1, 2, 2]
    assert all(log[-1][2] == 200 for log in logs)
    assert [entry[2] for log in logs for entry in log].count(500) == 2


async def test_round_robin_spreads_load(make_gateway, make_upstream):
    a, b = await make_upstream(), await make_upstream()
    api = await make_gateway()
    await add_key(api, a)
    await add_key(api, b)
    for _ in range(6):
        assert (await api.post(CHAT, chat())).status == 200
    assert len(a.seen) == len(b.seen) == 3


async def test_switch_over_to_the_next_level(make_gateway, make_upstream):
    one, two = await make_upstream(), await make_upstream()
    api = await make_gateway()
    await add_key(api, one, level=1)
    await add_key(api, two, level=2)
    await set_config(api, SWITCH_OVER="1=2")
    one.fail("503")
    r = await api.post(CHAT, chat())
    assert r.status == 200
    assert len(one.seen) == 1 and len(two.seen) == 1


async def test_level_mapper_picks_the_pool(make_gateway, make_upstream):
    one, three = await make_upstream(), await make_upstream()
    api = await make_gateway()
    await add_key(api, one, level=1)
    await add_key(api, three, level=3)
    await set_config(api, LEVEL_MAPPER="gpt-4o*=3")
    assert (await api.post(CHAT, chat("gpt-4o"))).status == 200
    assert (await api.post(CHAT, chat("o3"))).status == 200
    assert [s.json["model"] for s in three.seen] == ["gpt-4o"]
    assert [s.json["model"] for s in one.seen] == ["o3"]


async def test_429_sleeps_the_key_for_retry_after(make_gateway, make_upstream):
    a, b = await make_upstream(), await make_upstream()
    api = await make_gateway()
    ka = await add_key(api, a)
    await add_key(api, b)
    a.fail("429:7")
    b.fail("429")
    r = await api.post(CHAT, chat())
    assert r.status == 429  # both failed: the last upstream error, as sent
    key_a, key_b = api.gw.state.keys[ka], api.gw.state.keys[ka + 1]
    assert key_a.sleep_reason == key_b.sleep_reason == "rate_limited"
    now = time.time()
    assert 5 < key_a.sleep_until - now <= 7
    assert 25 < key_b.sleep_until - now <= 30  # key_sleep_429 default
    await api.gw.store.flush()
    row = await api.gw.store.fetchone("SELECT sleep_reason FROM provider_keys WHERE id = ?", (ka,))
    assert row["sleep_reason"] == "rate_limited"
    r = await api.post(CHAT, chat())
    assert (r.status, r.error_code) == (503, "no_provider_key")
    assert "Retry-After" in r.headers
    assert len(a.seen) == len(b.seen) == 1  # sleeping keys are not tried


async def test_401_and_403_move_on_without_sleeping_the_key(make_gateway, make_upstream):
    a, b, c = await make_upstream(), await make_upstream(), await make_upstream()
    api = await make_gateway()
    keys = [await add_key(api, f) for f in (a, b, c)]
    a.fail("401")
    b.fail("403")
    c.fail("401")
    r = await api.post(CHAT, chat())
    assert r.status in (401, 403)  # every key refused: the last answer, as sent
    for kid in keys:  # a client's request alone never sleeps a key: a probe decides
        assert api.gw.state.keys[kid].awake(time.time())
    assert (await api.post(CHAT, chat())).status == 200


async def test_all_fail_passes_the_last_upstream_error(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    upstream.fail("500", "502", "503", "500")
    r = await api.post(CHAT, chat())
    assert r.status == 500
    assert r.body["error"]["code"] == "fake_500"
    assert len(upstream.seen) == 1  # one key: one attempt


async def test_attempts_are_bounded(make_gateway, make_upstream):
    fakes = [await make_upstream() for _ in range(5)]
    api = await make_gateway(max_attempts=3)
    for f in fakes:
        await add_key(api, f)
        f.fail("500")
    r = await api.post(CHAT, chat())
    assert r.status == 500
    assert sum(len(f.seen) for f in fakes) == 3


async def test_no_key_is_503_and_unreachable_is_502(make_gateway, upstream):
    api = await make_gateway()
    r = await api.post(CHAT, chat())
    assert (r.status, r.error_code) == (503, "no_provider_key")
    await add_key(api, upstream)
    await upstream.server.close()
    r = await api.post(CHAT, chat())
    assert (r.status, r.error_code) == (502, "upstream_unavailable")


async def test_other_4xx_pass_through_untouched_and_unbilled(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    upstream.fail("400")
    r = await api.post(CHAT, chat())
    assert r.status == 400 and r.body["error"]["code"] == "fake_400"
    assert len(upstream.seen) == 1  # not retried
    await api.gw.store.flush()
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM usage") == 0


async def test_headers_timeout_moves_on(make_gateway, make_upstream):
    slow, fast = await make_upstream(), await make_upstream()
    api = await make_gateway(upstream_headers_timeout=0.3)
    await add_key(api, slow)
    await add_key(api, fast)
    slow.fail("hang", "hang")
    started = time.perf_counter()
    for _ in range(2):
        assert (await api.post(CHAT, chat())).status == 200
    assert time.perf_counter() - started < 3
    assert len(fast.seen) == 2


async def test_private_provider_refused_for_tenant_keys_at_connect(make_gateway, upstream):
    api = await make_gateway(allow_private_providers=False)
    router = api.gw.relay.router
    # A tenant's key that reaches loopback (e.g. its DNS changed after it was added).
    tenant_key = ProviderKey(id=99, owner_id=2, provider=upstream.url, secret="s" * 24)
    assert router.guarded(tenant_key)
    with pytest.raises(Refused):
        router.guard(tenant_key)
    root_key = ProviderKey(id=98, owner_id=1, provider=upstream.url, secret="s" * 24)
    router.guard(root_key)  # root may


def test_provider_url_with_v1_is_not_doubled():
    class _Gw:
        class state:  # noqa: N801
            keys_version = 0

    router = Router(_Gw())
    k = ProviderKey(id=1, owner_id=1, provider="https://api.example.com/v1/", secret="x")
    assert (
        str(router.url(k, "/v1/chat/completions?a=1"))
        == "https://api.example.com/v1/chat/completions?a=1"
    )
