"""Rate limits: request and token buckets, per account and per model, with OpenAI headers."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes import (
    PROMPT_TOKENS,
    add_user,
    chat,
    ready,
    set_config,
    update_user,
)
from xaiproxy import limits
from xaiproxy import settings as settings_mod

pytest_plugins = ["tests.fakes_fixtures"]

CHAT = "/v1/chat/completions"
BILLED = PROMPT_TOKENS + 5  # tokens one plain fake answer bills


async def test_bucket_non_blocking_checks():
    b = limits.Bucket(2, 60)
    assert b.fits(1) and b.remaining() == 2
    b.take(1)
    b.take(1)
    assert not b.fits(1) and b.remaining() == 0
    assert 29 < b.reset_after(1) <= 30
    b.take(5)  # token charges may go past the limit
    assert b.full_for() > 0


def test_reset_format():
    assert limits.duration(0.02) == "20ms"
    assert limits.duration(1.2) == "2s"
    assert limits.duration(360) == "6m0s"
    assert limits.duration(3723) == "1h2m3s"


async def test_rpm_refuses_with_retry_after_and_headers(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api, RPM=2)
    r = await api.post(CHAT, chat(), key=key)
    assert r.status == 200
    assert r.headers["x-ratelimit-limit-requests"] == "2"
    assert r.headers["x-ratelimit-remaining-requests"] == "1"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    assert (await api.post(CHAT, chat(), key=key)).status == 200
    r = await api.post(CHAT, chat(), key=key)
    assert (r.status, r.error_code) == (429, "rate_limit_exceeded")
    assert r.body["error"]["type"] == "rate_limit_error"
    assert 1 <= int(r.headers["Retry-After"]) <= 30
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(upstream.seen) == 2


async def test_tpm_counts_billed_tokens(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, TPM=BILLED + 1)
    assert (await api.post(CHAT, chat(), key=key)).status == 200  # bills 17 of 18
    r = await api.post(CHAT, chat(), key=key)
    assert r.status == 200  # still under: admitted, then billed past the limit
    assert r.headers["x-ratelimit-limit-tokens"] == str(BILLED + 1)
    r = await api.post(CHAT, chat(), key=key)
    assert (r.status, r.error_code) == (429, "rate_limit_exceeded")
    assert r.headers["x-ratelimit-remaining-tokens"] == "0"
    assert api.gw.state.accounts[uid].reserved_n == 0


async def test_owner_model_limits_apply_with_account_model_limits(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    await set_config(api, MODEL_LIMITS={"gpt-4o*": {"rpm": 1}})
    uid, key = await add_user(api)
    assert (await api.post(CHAT, chat("gpt-4o"), key=key)).status == 200
    assert (await api.post(CHAT, chat("gpt-4o"), key=key)).status == 429
    assert (await api.post(CHAT, chat("o3"), key=key)).status == 200  # other models are free
    # An account's own ModelLimits (even 0) add to the owner's, never replace them,
    # and editing the account does not reset the owner's buckets.
    for own in ({"gpt-4o": {"rpm": 5}}, {"gpt-4o": {"rpm": 0}}):
        await update_user(api, uid, ModelLimits=own)
        assert (await api.post(CHAT, chat("gpt-4o"), key=key)).status == 429


async def test_limits_rebuilt_when_changed(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, RPM=1)
    assert (await api.post(CHAT, chat(), key=key)).status == 200
    assert (await api.post(CHAT, chat(), key=key)).status == 429
    await update_user(api, uid, RPM=10)
    r = await api.post(CHAT, chat(), key=key)
    assert r.status == 200 and r.headers["x-ratelimit-limit-requests"] == "10"


async def test_unlimited_account_gets_no_limit_headers(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    r = await api.post(CHAT, chat())
    assert r.status == 200 and "x-ratelimit-limit-requests" not in r.headers


async def test_a_childs_requests_count_against_every_ancestor(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, pkey = await add_user(api, RPM=2, TPM=10 * BILLED)
    _, k1 = await add_user(api, credit=30, key=pkey)  # RPM 0: none of its own
    _, k2 = await add_user(api, credit=30, key=pkey, RPM=2)
    assert (await api.post(CHAT, chat(), key=k1)).status == 200
    assert (await api.post(CHAT, chat(), key=k2)).status == 200
    for key in (k1, k2, pkey):  # the parent's bucket is shared by its whole subtree
        r = await api.post(CHAT, chat(), key=key)
        assert (r.status, r.error_code) == (429, "rate_limit_exceeded")
        assert r.headers["x-ratelimit-limit-requests"] == "2"


async def test_account_model_limits_are_shared_by_the_subtree(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, pkey = await add_user(api, ModelLimits={"gpt-4o*": {"rpm": 1}})
    _, k1 = await add_user(api, credit=30, key=pkey)
    _, k2 = await add_user(api, credit=30, key=pkey, ModelLimits={"gpt-4o": {"rpm": 9}})
    assert (await api.post(CHAT, chat("gpt-4o"), key=k1)).status == 200
    assert (await api.post(CHAT, chat("gpt-4o"), key=k2)).status == 429
    assert (await api.post(CHAT, chat("o3"), key=k2)).status == 200


async def test_owner_model_limits_cover_each_subtree_below_the_owner(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    await set_config(api, MODEL_LIMITS={"gpt-4o": {"rpm": 1}})
    _, pkey = await add_user(api)
    _, k1 = await add_user(api, credit=30, key=pkey)
    _, k2 = await add_user(api, credit=30, key=pkey)
    _, other = await add_user(api)
    assert (await api.post(CHAT, chat("gpt-4o"), key=k1)).status == 200
    assert (await api.post(CHAT, chat("gpt-4o"), key=k2)).status == 429  # via the parent
    assert (await api.post(CHAT, chat("gpt-4o"), key=other)).status == 200  # its own bucket
    assert (await api.post(CHAT, chat("gpt-4o"))).status == 200  # root: the owner's own


async def test_random_model_names_add_no_buckets(make_gateway):
    """Buckets are keyed by the matched pattern: 2,000 model names, one bucket per pattern.
    (Keyed by name, there would be ~2,000; more names prove no more and cost CI minutes.)"""
    api = await make_gateway()  # no provider key: every request ends 503 after admission
    await set_config(api, MODEL_LIMITS={"gpt-*": {"rpm": 10**9}, "*": {"tpm": 10**12}})
    uid, key = await add_user(api, ModelLimits={"o*": {"rpd": 10**9}})
    acc = api.gw.state.accounts[uid]
    names = [f"{('gpt-', 'o', 'x')[i % 3]}{i:x}-{i * 7919 % 100003}" for i in range(2_000)]
    for start in range(0, len(names), 200):
        replies = await asyncio.gather(
            *(api.post(CHAT, chat(n), key=key) for n in names[start : start + 200])
        )
        assert {r.status for r in replies} == {503}
    table = api.gw.limiter.table  # the limiter's own table, keyed by account id
    assert set(table[acc.id].models) == {("owner", "gpt-*"), ("owner", "*"), ("account", "o*")}
    assert api.gw.state.root.id not in table or set(table[api.gw.state.root.id].models) == set()


def test_the_limiter_is_chosen_in_settings():
    assert settings_mod.limiter_name(settings_mod.load(env={})) == "memory"
    assert isinstance(limits.create("memory"), limits.MemoryLimiter)
    url = "redis://:secret@127.0.0.1:1/0"
    assert settings_mod.limiter_name(settings_mod.load(env={"XAI_REDIS": url})) == "redis"
    with pytest.raises(settings_mod.SettingsError) as err:
        settings_mod.load(env={"XAI_LIMITER": "redis"})
    assert "limiter 'redis' needs the redis setting" in str(err.value)
    with pytest.raises(settings_mod.SettingsError) as err:
        settings_mod.load(env={"XAI_LIMITER": "memory", "XAI_REDIS": url})
    assert "limiter 'memory' cannot be used with redis set" in str(err.value)
    assert "secret" not in str(err.value)
    with pytest.raises(settings_mod.SettingsError) as err:
        settings_mod.load(env={"XAI_LIMITER": "disk"})
    assert "limiter 'disk' is not supported (supported: memory, redis)" in str(err.value)


async def test_a_deleted_account_leaves_no_buckets(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, RPM=5)
    assert (await api.post(CHAT, chat(), key=key)).status == 200
    assert api.gw.limiter.table[uid].own is not None
    assert (await api.delete(f"/x-users/{uid}")).status == 200
    assert uid not in api.gw.limiter.table
