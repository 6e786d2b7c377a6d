"""The official SDKs, unchanged, against the real gateway and the fake upstream."""

from __future__ import annotations

import asyncio

import anthropic
import openai
import pytest

from tests.fakes import add_user, anthropic_body, ready

pytest_plugins = ["tests.fakes_fixtures"]

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def served(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api)
    return api, uid, key


async def test_openai_async_plain_stream_embeddings(served):
    api, uid, key = served
    async with openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=key, max_retries=0) as client:
        done = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert done.choices[0].message.content == "hello from the fake"
        assert done.usage.prompt_tokens == 12
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 "
        assert all(c.usage is None for c in chunks)  # the usage chunk we asked for is not shown
        emb = await client.embeddings.create(model="text-embedding-3-small", input="x")
        assert emb.data[0].embedding == [0.1, 0.2, 0.3]
    await api.gw.store.flush()
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM usage WHERE account_id = ?", (uid,)) == 3


async def test_openai_sync_client_in_a_thread(served):
    api, _, key = served

    def run():
        with openai.OpenAI(base_url=api.url + "/v1", api_key=key, max_retries=0) as client:
            done = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            parts = [
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                if c.choices
            ]
            models = [m.id for m in client.models.list()]
            return done.usage.completion_tokens, "".join(parts), models

    completion, text, models = await asyncio.to_thread(run)
    assert completion == 5 and text == "tok0 tok1 tok2 " and "gpt-4o-mini" in models


async def test_openai_errors_map_to_sdk_exceptions(served):
    api, _, key = served
    async with openai.AsyncOpenAI(
        base_url=api.url + "/v1", api_key="sk-wrong", max_retries=0
    ) as bad:
        with pytest.raises(openai.AuthenticationError) as exc:
            await bad.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert exc.value.code == "invalid_api_key"
    async with openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=key, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="", messages=MESSAGES)


async def test_anthropic_plain_and_stream(served):
    api, uid, key = served
    async with anthropic.AsyncAnthropic(base_url=api.url, api_key=key, max_retries=0) as client:
        msg = await client.messages.create(
            model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES
        )
        assert msg.content[0].text == "hello from the fake" and msg.usage.output_tokens == 5
        async with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text == "tok tok tok " and final.usage.output_tokens == 3
    await api.gw.store.flush()
    assert (
        await api.gw.store.scalar(
            "SELECT SUM(completion_tokens) FROM usage WHERE account_id = ?", (uid,)
        )
        == 8
    )


async def test_anthropic_errors_map_to_sdk_exceptions(served):
    api, _, _ = served
    async with anthropic.AsyncAnthropic(base_url=api.url, api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as exc:
            await bad.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES)
        assert exc.value.body["error"]["code"] == "invalid_api_key"


async def test_anthropic_stream_cut_raises_in_the_sdk(served, upstream):
    api, _, key = served
    async with anthropic.AsyncAnthropic(
        base_url=api.url, api_key=key, max_retries=0, default_headers={"x-fake-fault": "reset:3"}
    ) as client:
        with pytest.raises(anthropic.APIStatusError):
            async with client.messages.stream(**anthropic_body()) as stream:
                async for _ in stream.text_stream:
                    pass
