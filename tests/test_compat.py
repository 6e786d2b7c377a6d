"""Compatibility matrix: each official SDK client against the real gateway, and each retrying
correctly on the gateway's own 429 (rate limit) and 503 (overload), honouring Retry-After."""

from __future__ import annotations

import asyncio
import time

import anthropic
import openai
import pytest

from tests.fakes import add_user, chat, ready

pytest_plugins = ["tests.fakes_fixtures"]

MESSAGES = [{"role": "user", "content": "hi"}]
pytestmark = pytest.mark.timeout(90)


async def _openai_async(api, key, retries=2):
    async with openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=key, max_retries=retries) as c:
        r = await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return r.choices[0].message.content


async def _openai_sync(api, key, retries=2):
    def call():
        with openai.OpenAI(base_url=api.url + "/v1", api_key=key, max_retries=retries) as c:
            r = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            return r.choices[0].message.content

    return await asyncio.to_thread(call)


async def _anthropic_async(api, key, retries=2):
    async with anthropic.AsyncAnthropic(base_url=api.url, api_key=key, max_retries=retries) as c:
        r = await c.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES)
        return r.content[0].text


async def _anthropic_sync(api, key, retries=2):
    def call():
        with anthropic.Anthropic(base_url=api.url, api_key=key, max_retries=retries) as c:
            r = c.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES)
            return r.content[0].text

    return await asyncio.to_thread(call)


CLIENTS = {
    "openai-async": _openai_async,
    "openai-sync": _openai_sync,
    "anthropic-async": _anthropic_async,
    "anthropic-sync": _anthropic_sync,
}


@pytest.fixture
async def gateway(make_gateway, upstream):
    return await ready(make_gateway, upstream)


async def test_openai_responses_api_plain_and_streamed(gateway):
    _, key = await add_user(gateway)
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as c:
        done = await c.responses.create(model="gpt-4o-mini", input="hi")
        assert done.usage.input_tokens == 12
        events = [
            e.type
            async for e in await c.responses.create(model="gpt-4o-mini", input="hi", stream=True)
        ]
        assert events[0] == "response.created" and events[-1] == "response.completed"
    await gateway.gw.store.flush()
    rows = await gateway.gw.store.fetchall("SELECT path, prompt_tokens FROM usage")
    assert [tuple(r) for r in rows] == [("/v1/responses", 12), ("/v1/responses", 12)]


async def test_anthropic_async_stream(gateway):
    _, key = await add_user(gateway)
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0) as c:
        async with c.messages.stream(
            model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES
        ) as s:
            text = "".join([t async for t in s.text_stream])
            final = await s.get_final_message()
    assert text and final.usage.input_tokens == 12


@pytest.mark.parametrize("client", CLIENTS)
async def test_sdk_retries_the_gateways_429_after_retry_after(gateway, client):
    # TPM 60 drains one token a second; a 62-token answer leaves the bucket 2 over,
    # so the next call is refused with Retry-After: 2 and passes once it has drained.
    _, key = await add_user(gateway, TPM=60)
    first = await gateway.post(
        "/v1/chat/completions", chat(stream=True), key=key, headers={"x-fake-chunks": "50"}
    )
    assert first.status == 200
    refused = await gateway.post("/v1/chat/completions", chat(), key=key)
    assert refused.status == 429 and refused.error_code == "rate_limit_exceeded"
    assert refused.headers["Retry-After"] in ("2", "3")  # 2 tokens over at 1/s, rounded up
    assert refused.headers["x-ratelimit-limit-tokens"] == "60"
    started = time.monotonic()
    assert await CLIENTS[client](gateway, key)  # the SDK waits Retry-After, then succeeds
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize("client", CLIENTS)
async def test_sdk_without_retries_sees_the_gateways_429_body(gateway, client):
    _, key = await add_user(gateway, TPM=60)
    await gateway.post(
        "/v1/chat/completions", chat(stream=True), key=key, headers={"x-fake-chunks": "50"}
    )
    with pytest.raises((openai.RateLimitError, anthropic.RateLimitError)) as info:
        await CLIENTS[client](gateway, key, retries=0)
    err = info.value
    assert err.status_code == 429
    assert err.response.headers["Retry-After"] in ("2", "3")
    body = err.body if isinstance(err, anthropic.RateLimitError) else {"error": err.body}
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("client", CLIENTS)
async def test_sdk_retries_the_gateways_503_overload(make_gateway, upstream, client):
    api = await ready(make_gateway, upstream, max_inflight=1)
    _, key = await add_user(api)
    # One slow stream holds the only slot for ~1.2 s; the SDK's call meets a 503 with
    # Retry-After: 1, waits, and gets through once the slot is free.
    slow = asyncio.create_task(
        api.post(
            "/v1/chat/completions",
            chat(stream=True),
            key=key,
            headers={"x-fake-chunks": "4", "x-fake-delay": "0.3"},
        )
    )
    await asyncio.sleep(0.2)
    assert api.gw.relay.inflight == 1
    overloaded = await api.post("/v1/chat/completions", chat(), key=key)
    assert overloaded.status == 503 and overloaded.headers["Retry-After"] == "1"
    assert overloaded.error_code == "overloaded"
    assert await CLIENTS[client](api, key, retries=3)
    assert (await slow).status == 200
