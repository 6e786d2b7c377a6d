"""OpenAI <-> Anthropic translation end to end: the real SDKs, the gateway, strict vendor fakes."""

from __future__ import annotations

import anthropic
import openai
import orjson
import pytest

from tests.fakes import add_key, add_user, set_config
from tests.vendor_fakes import TOOL_ARGS, AnthropicFake, AzureFake, GeminiFake, OpenAIFake

pytest_plugins = ["tests.fakes_fixtures", "tests.vendor_fixtures"]

HI = [{"role": "user", "content": "hi"}]
OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ANTHROPIC_TOOL = {
    "name": "weather",
    "description": "The weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


async def gateway(make_gateway, make_vendor, cls, key_type: str, **settings):
    fake = await make_vendor(cls)
    api = await make_gateway(**settings)
    await add_key(api, fake, Type=key_type)
    uid, key = await add_user(api)
    return api, fake, uid, key


def oai(api, key, **kw):
    return openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=key, max_retries=0, **kw)


def ant(api, key, **kw):
    return anthropic.AsyncAnthropic(base_url=api.url, api_key=key, max_retries=0, **kw)


async def usage_rows(api, uid):
    await api.gw.store.flush()
    sql = (
        "SELECT model, upstream_model, prompt_tokens, completion_tokens, cached_tokens,"
        " estimated, cost_n FROM usage WHERE account_id = ? ORDER BY id"
    )
    return [dict(r) for r in await api.gw.store.fetchall(sql, (uid,))]


# -- an OpenAI client, an Anthropic key ---------------------------------------------------
async def test_openai_client_plain_to_anthropic_key(make_gateway, make_vendor):
    api, fake, uid, key = await gateway(make_gateway, make_vendor, AnthropicFake, "anthropic")
    messages = [{"role": "system", "content": "Be brief."}, *HI]
    async with oai(api, key) as client:
        done = await client.chat.completions.create(
            model="claude-haiku-4-5", messages=messages, stop="END", temperature=1.5
        )
    assert done.choices[0].message.content == "hello from the fake"
    assert done.choices[0].finish_reason == "stop" and done.object == "chat.completion"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (12, 5)
    sent = fake.last
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"].startswith("sk-upstream-")
    assert sent.headers["anthropic-version"] == "2023-06-01" and "Authorization" not in sent.headers
    assert sent.json["system"] == "Be brief." and sent.json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    ]
    assert sent.json["max_tokens"] == 4096 and sent.json["stop_sequences"] == ["END"]
    assert sent.json["temperature"] == 1.0
    (row,) = await usage_rows(api, uid)
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (12, 5, 0)


async def test_openai_client_stream_to_anthropic_key(make_gateway, make_vendor):
    api, fake, uid, key = await gateway(make_gateway, make_vendor, AnthropicFake, "anthropic")
    async with oai(api, key) as client:
        stream = await client.chat.completions.create(
            model="claude-haiku-4-5", messages=HI, stream=True, max_tokens=50
        )
        chunks = [c async for c in stream]
        with_usage = await client.chat.completions.create(
            model="claude-haiku-4-5",
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-fake-cached": "6"},
        )
        last = [c async for c in with_usage][-1]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok tok tok "
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # not asked for: not sent
    assert fake.seen[-2].json["max_tokens"] == 50 and fake.seen[-2].json["stream"] is True
    assert last.choices == [] and last.usage.completion_tokens == 3
    assert (last.usage.prompt_tokens, last.usage.prompt_tokens_details.cached_tokens) == (18, 6)
    rows = await usage_rows(api, uid)
    assert [(r["prompt_tokens"], r["completion_tokens"], r["cached_tokens"]) for r in rows] == [
        (12, 3, 0),
        (18, 3, 6),
    ]
    assert not any(r["estimated"] for r in rows)


async def test_openai_client_tool_calls_through_anthropic(make_gateway, make_vendor):
    api, fake, uid, key = await gateway(make_gateway, make_vendor, AnthropicFake, "anthropic")
    async with oai(api, key) as client:
        done = await client.chat.completions.create(
            model="claude-sonnet-4-5", messages=HI, tools=[OPENAI_TOOL], tool_choice="required"
        )
        call = done.choices[0].message.tool_calls[0]
        assert done.choices[0].finish_reason == "tool_calls"
        assert (call.id, call.function.name) == ("toolu_01", "weather")
        assert orjson.loads(call.function.arguments) == TOOL_ARGS
        assert fake.last.json["tools"] == [ANTHROPIC_TOOL]
        assert fake.last.json["tool_choice"] == {"type": "any"}
        # the answer goes back with the tool's result: tool_use and tool_result blocks
        follow = [
            *HI,
            done.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ]
        stream = await client.chat.completions.create(
            model="claude-sonnet-4-5", messages=follow, tools=[OPENAI_TOOL], stream=True
        )
        chunks = [c async for c in stream]
    sent = fake.last.json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"][1] == {
        "type": "tool_use",
        "id": "toolu_01",
        "name": "weather",
        "input": TOOL_ARGS,
    }
    assert sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny"}
    ]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    args = "".join(d.tool_calls[0].function.arguments or "" for d in deltas if d.tool_calls)
    assert orjson.loads(args) == TOOL_ARGS
    assert "".join(d.content or "" for d in deltas) == "Let me check."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    rows = await usage_rows(api, uid)
    assert [(r["prompt_tokens"], r["completion_tokens"], r["cached_tokens"]) for r in rows] == [
        (12, 7, 4),
        (12, 7, 4),
    ]


async def test_openai_client_gets_openai_errors_from_anthropic(make_gateway, make_vendor):
    api, fake, _, key = await gateway(
        make_gateway, make_vendor, AnthropicFake, "anthropic", max_attempts=1
    )
    async with oai(api, key) as client:
        with pytest.raises(openai.BadRequestError) as exc:
            await client.chat.completions.create(
                model="claude-haiku-4-5", messages=HI, extra_headers={"x-fake-fault": "400"}
            )
        assert exc.value.body["message"] == "fake upstream error 400"
        assert "type" in exc.value.body and exc.value.code == "fake_error"
        seen = len(fake.seen)
        with pytest.raises(openai.BadRequestError) as exc:
            await client.chat.completions.create(model="claude-haiku-4-5", messages=HI, n=2)
        assert exc.value.code == "untranslatable_request" and "'n'" in exc.value.message
        assert len(fake.seen) == seen  # refused before it went anywhere
        with pytest.raises(openai.RateLimitError) as exc:
            await client.chat.completions.create(
                model="claude-haiku-4-5", messages=HI, extra_headers={"x-fake-fault": "429:1"}
            )
        assert exc.value.body["message"] == "fake upstream error 429"


# -- an Anthropic client, an OpenAI key -----------------------------------------------------
async def test_anthropic_client_plain_and_stream_to_openai_key(make_gateway, make_vendor):
    api, fake, uid, key = await gateway(make_gateway, make_vendor, OpenAIFake, "openai")
    async with ant(api, key) as client:
        msg = await client.messages.create(
            model="gpt-4o-mini",
            max_tokens=64,
            system="Be brief.",
            messages=HI,
            extra_body={"top_k": 5},
        )
        assert msg.content[0].text == "hello from the fake" and msg.stop_reason == "end_turn"
        assert (msg.usage.input_tokens, msg.usage.output_tokens) == (12, 5)
        sent = fake.last
        assert sent.path == "/v1/chat/completions" and "x-api-key" not in sent.headers
        assert sent.headers["Authorization"].startswith("Bearer sk-upstream-")
        assert sent.json["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ]
        assert sent.json["max_completion_tokens"] == 64 and "top_k" not in sent.json
        async with client.messages.stream(model="gpt-4o-mini", max_tokens=64, messages=HI) as s:
            text = "".join([t async for t in s.text_stream])
            final = await s.get_final_message()
    assert text == "tok0 tok1 tok2 " and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 3)
    assert fake.last.json["stream_options"] == {"include_usage": True}
    rows = await usage_rows(api, uid)
    assert [(r["prompt_tokens"], r["completion_tokens"], r["estimated"]) for r in rows] == [
        (12, 5, 0),
        (12, 3, 0),
    ]


async def test_anthropic_client_tool_use_through_openai(make_gateway, make_vendor):
    api, fake, uid, key = await gateway(make_gateway, make_vendor, OpenAIFake, "openai")
    async with ant(api, key) as client:
        msg = await client.messages.create(
            model="gpt-4o", max_tokens=64, messages=HI, tools=[ANTHROPIC_TOOL],
            tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        )  # fmt: skip
        assert msg.stop_reason == "tool_use" and msg.content[0].text == "Let me check."
        use = msg.content[1]
        assert (use.type, use.id, use.name, use.input) == (
            "tool_use",
            "call_abc",
            "weather",
            TOOL_ARGS,
        )
        assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens) == (8, 4)
        assert fake.last.json["tool_choice"] == {
            "type": "function",
            "function": {"name": "weather"},
        }
        assert fake.last.json["parallel_tool_calls"] is False
        follow = [
            *HI,
            {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_abc", "content": "sunny"},
                {"type": "text", "text": "and tomorrow?"},
            ]},
        ]  # fmt: skip
        async with client.messages.stream(
            model="gpt-4o", max_tokens=64, messages=follow, tools=[ANTHROPIC_TOOL]
        ) as stream:
            final = await stream.get_final_message()
    sent = fake.last.json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[2] == {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"}
    assert final.stop_reason == "tool_use" and final.content[0].text == "Let me check."
    assert final.content[1].input == TOOL_ARGS and final.content[1].name == "weather"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (8, 7)
    rows = await usage_rows(api, uid)
    assert [(r["prompt_tokens"], r["cached_tokens"]) for r in rows] == [(12, 4), (12, 4)]


async def test_anthropic_client_gets_anthropic_errors_from_openai(make_gateway, make_vendor):
    api, fake, _, key = await gateway(
        make_gateway, make_vendor, OpenAIFake, "openai", max_attempts=1
    )
    async with ant(api, key) as client:
        with pytest.raises(anthropic.BadRequestError) as exc:
            await client.messages.create(
                model="gpt-4o", max_tokens=10, messages=HI, extra_headers={"x-fake-fault": "400"}
            )
        assert exc.value.body["type"] == "error"
        assert exc.value.body["error"]["message"] == "fake upstream error 400"
        with pytest.raises(anthropic.InternalServerError) as exc:
            await client.messages.create(
                model="gpt-4o", max_tokens=10, messages=HI, extra_headers={"x-fake-fault": "500"}
            )
        assert exc.value.body["error"]["type"] == "fake_error"
        web_search = {"type": "web_search_20250305", "name": "web_search"}
        with pytest.raises(anthropic.BadRequestError) as exc:
            await client.messages.create(
                model="gpt-4o", max_tokens=10, messages=HI, tools=[web_search]
            )
        assert exc.value.body["error"]["code"] == "untranslatable_request"
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.count_tokens(model="gpt-4o", messages=HI)


# -- per attempt: fallback across vendors, Azure and Gemini behind an Anthropic client -------
async def test_fallback_from_an_anthropic_level_to_an_openai_level_and_back(
    make_gateway, make_vendor
):
    claude, gpt = await make_vendor(AnthropicFake), await make_vendor(OpenAIFake)
    api = await make_gateway()
    await add_key(api, claude, level=1, Type="anthropic")
    await add_key(api, gpt, level=2, Type="openai")
    await set_config(api, LEVEL_MAPPER={"*": 1}, SWITCH_OVER={"1": 2, "2": 1})
    uid, key = await add_user(api)
    claude.fail("500")
    async with oai(api, key) as client:
        done = await client.chat.completions.create(model="claude-haiku-4-5", messages=HI)
    assert done.choices[0].message.content == "hello from the fake"
    assert [len(claude.seen), len(gpt.seen)] == [1, 1]  # tried as Messages, served as Chat
    assert gpt.last.json["messages"] == HI
    await set_config(api, LEVEL_MAPPER={"*": 2}, SWITCH_OVER={"1": 2, "2": 1})
    gpt.fail("503")
    async with ant(api, key) as client:
        async with client.messages.stream(model="gpt-4o", max_tokens=9, messages=HI) as stream:
            text = "".join([t async for t in stream.text_stream])
    assert text == "tok tok tok " and [len(claude.seen), len(gpt.seen)] == [2, 2]
    assert "stream_options" not in claude.last.json
    rows = await usage_rows(api, uid)
    assert [(r["completion_tokens"], r["estimated"]) for r in rows] == [(5, 0), (3, 0)]


async def test_anthropic_client_to_azure_and_gemini_keys(make_gateway, make_vendor):
    azure, gemini = await make_vendor(AzureFake), await make_vendor(GeminiFake)
    api = await make_gateway()
    await add_key(api, azure, level=1, Type="azure", Config={"deployments": {"gpt-4o": "prod"}})
    await add_key(api, gemini, level=2, Type="gemini")
    await set_config(api, LEVEL_MAPPER={"gemini*": 2})
    _, key = await add_user(api)
    async with ant(api, key) as client:
        a = await client.messages.create(model="gpt-4o", max_tokens=10, messages=HI)
        g = await client.messages.create(model="gemini-2.5-pro", max_tokens=10, messages=HI)
    assert a.content[0].text == g.content[0].text == "hello from the fake"
    assert azure.last.path == "/openai/deployments/prod/chat/completions?api-version=2024-10-21"
    assert azure.last.headers["api-key"].startswith("sk-upstream-")
    assert azure.last.json["max_completion_tokens"] == 10
    assert gemini.last.path == "/v1beta/openai/chat/completions"
    assert gemini.last.json["max_tokens"] == 10
    assert gemini.last.headers["Authorization"].startswith("Bearer sk-upstream-")
