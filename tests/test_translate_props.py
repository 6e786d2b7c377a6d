"""Translation as pure functions: a request there and back, an answer there and back (whole
and streamed, cut at arbitrary bytes) keep text, tool calls and token counts."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xaiproxy.errors import ApiError
from xaiproxy.translate import common, to_anthropic, to_openai

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
               max_size=12)  # fmt: skip
NAME = st.from_regex(r"[a-z_]{1,8}", fullmatch=True)
ARGS = st.dictionaries(NAME, st.one_of(st.integers(-5, 5), TEXT, st.booleans()), max_size=3)
TOKENS = st.integers(0, 2**31)
IMAGE = st.one_of(
    st.builds(lambda d: f"data:image/png;base64,{d}", st.from_regex(r"[A-Za-z0-9+/]{4,16}", fullmatch=True)),
    st.builds(lambda p: f"https://img.example/{p}.jpg", NAME),
)  # fmt: skip
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def calls(draw, prefix: str):
    n = draw(st.integers(0, 3))
    return [(f"{prefix}{i}_{draw(NAME)}", draw(NAME), draw(ARGS)) for i in range(n)]


@st.composite
def conversations(draw):
    """An OpenAI chat: system, then user / assistant (+ tool calls and their results) turns."""
    msgs = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
    for turn in range(draw(st.integers(1, 3))):
        parts = [{"type": "text", "text": draw(TEXT)}]
        parts += [
            {"type": "image_url", "image_url": {"url": u}}
            for u in draw(st.lists(IMAGE, max_size=2))
        ]
        msgs.append({"role": "user", "content": parts if len(parts) > 1 else parts[0]["text"]})
        made = draw(calls(f"call_{turn}_"))
        text = draw(st.one_of(st.none(), TEXT))
        assistant = {"role": "assistant", "content": text if text or not made else None}
        if made:
            assistant["tool_calls"] = [
                {
                    "id": i,
                    "type": "function",
                    "function": {"name": n, "arguments": orjson.dumps(a).decode()},
                }
                for i, n, a in made
            ]
        elif not text:
            assistant["content"] = draw(TEXT)
        msgs.append(assistant)
        msgs += [{"role": "tool", "tool_call_id": i, "content": draw(TEXT)} for i, _n, _a in made]
    msgs.append({"role": "user", "content": draw(TEXT)})
    return msgs  # fmt: skip


def items(messages: list[dict]) -> list[tuple]:
    """What must survive: role and text, images, tool calls with parsed arguments, results."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            text = "".join(p["text"] for p in content if p["type"] == "text")
            images = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
        else:
            text, images = content or "", []
        out.append((m["role"], text, tuple(images), m.get("tool_call_id")))
        for c in m.get("tool_calls") or []:
            fn = c["function"]
            out.append(("call", c["id"], fn["name"], orjson.loads(fn["arguments"])))
    return out


@SETTINGS
@given(conversations(), st.integers(1, 4096), st.lists(TEXT, max_size=3))
def test_openai_request_there_and_back(messages, cap, stops):
    body = {"model": "m", "messages": messages, "max_tokens": cap, "stop": stops or None,
            "temperature": 0.5, "top_p": 0.9}  # fmt: skip
    there = to_anthropic.request(body, 4096)
    assert all(m["role"] in ("user", "assistant") for m in there["messages"])
    back = to_openai.request(there, "max_tokens")
    assert items(back["messages"]) == items(messages)
    assert back["max_tokens"] == cap and back.get("stop", []) == stops
    assert (back["temperature"], back["top_p"]) == (0.5, 0.9)


@st.composite
def anthropic_messages(draw):
    content = [{"type": "text", "text": t} for t in draw(st.lists(TEXT, max_size=2))]
    content += [{"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": a}
                for i, (_, n, a) in enumerate(draw(calls("x")))]  # fmt: skip
    usage = {"input_tokens": draw(TOKENS), "output_tokens": draw(TOKENS),
             "cache_read_input_tokens": draw(TOKENS), "cache_creation_input_tokens": draw(TOKENS)}  # fmt: skip
    stop = "tool_use" if any(b["type"] == "tool_use" for b in content) else draw(
        st.sampled_from(["end_turn", "max_tokens"]))  # fmt: skip
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": content, "stop_reason": stop, "stop_sequence": None, "usage": usage}  # fmt: skip


def summary(msg: dict) -> tuple:
    text = "".join(b["text"] for b in msg["content"] if b["type"] == "text")
    tools = [(b["id"], b["name"], b["input"]) for b in msg["content"] if b["type"] == "tool_use"]
    u = msg["usage"]
    prompt = u["input_tokens"] + u.get("cache_read_input_tokens", 0) + u.get(
        "cache_creation_input_tokens", 0)  # fmt: skip
    return (
        text,
        tools,
        msg["stop_reason"],
        prompt,
        u["output_tokens"],
        u.get("cache_read_input_tokens", 0),
    )


@SETTINGS
@given(anthropic_messages())
def test_whole_answer_there_and_back(msg):
    chat = to_anthropic.answer(msg)
    assert chat["usage"]["prompt_tokens"] == summary(msg)[3]
    assert summary(to_openai.answer(chat)) == summary(msg)


def anthropic_sse(msg: dict) -> bytes:
    """A Message as the events Anthropic streams (usage split between start and delta)."""
    ev = common.sse_event
    u = msg["usage"]
    start = {**msg, "content": [], "stop_reason": None, "usage": {**u, "output_tokens": 1}}
    out = [ev("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(msg["content"]):
        empty = {**block, "text": ""} if block["type"] == "text" else {**block, "input": {}}
        out.append(
            ev(
                "content_block_start",
                {"type": "content_block_start", "index": i, "content_block": empty},
            )
        )
        if block["type"] == "text":
            pieces = [{"type": "text_delta", "text": ch} for ch in block["text"]]
        else:
            raw = orjson.dumps(block["input"]).decode()
            pieces = [
                {"type": "input_json_delta", "partial_json": raw[j : j + 3]}
                for j in range(0, len(raw), 3)
            ]
        out += [
            ev("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d})
            for d in pieces
        ]
        out.append(ev("content_block_stop", {"type": "content_block_stop", "index": i}))
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": u["output_tokens"]},
    }
    out += [ev("message_delta", delta), ev("message_stop", {"type": "message_stop"})]
    return b"".join(out)  # fmt: skip


def run(stream, data: bytes, cuts: list[int]) -> bytes:
    reader, out, last = common.EventReader(), [], 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        out += [stream.event(n, d) for n, d in reader.feed(data[last:cut])]
        last = cut
    out += [stream.event(n, d) for n, d in reader.finish()]
    return b"".join(out) + stream.end()


def accumulate(data: bytes) -> dict:
    """What the Anthropic SDK builds from the events."""
    msg: dict = {}
    bufs: dict[int, str] = {}
    for _name, raw in common.EventReader().feed(data + b"\n\n"):
        e = orjson.loads(raw)
        if e["type"] == "message_start":
            msg = e["message"]
        elif e["type"] == "content_block_start":
            msg["content"].append(e["content_block"])
        elif e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta":
            msg["content"][e["index"]]["text"] += e["delta"]["text"]
        elif e["type"] == "content_block_delta":
            bufs[e["index"]] = bufs.get(e["index"], "") + e["delta"]["partial_json"]
        elif e["type"] == "message_delta":
            msg["stop_reason"] = e["delta"]["stop_reason"]
            msg["usage"].update(e["usage"])
    for i, raw in bufs.items():
        msg["content"][i]["input"] = orjson.loads(raw)
    return msg


@SETTINGS
@given(anthropic_messages(), st.lists(st.integers(0, 10**6), max_size=12),
       st.lists(st.integers(0, 10**6), max_size=12))  # fmt: skip
def test_streamed_answer_there_and_back_cut_anywhere(msg, cuts1, cuts2):
    chat_sse = run(to_anthropic.Stream(True), anthropic_sse(msg), cuts1)
    assert chat_sse.endswith(b"data: [DONE]\n\n")
    back = run(to_openai.Stream(), chat_sse, cuts2)
    assert summary(accumulate(back)) == summary(msg)


def test_images_both_ways():
    url = {"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}
    b64 = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}}
    body = {"messages": [{"role": "user", "content": [url, b64]}]}
    blocks = to_anthropic.request(body, 10)["messages"][0]["content"]
    assert blocks == [
        {"type": "image", "source": {"type": "url", "url": "https://x.example/a.png"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
    ]
    back = to_openai.request({"messages": [{"role": "user", "content": blocks}]}, "max_tokens")
    assert back["messages"][0]["content"] == [url, b64]


@pytest.mark.parametrize(
    ("translate", "body", "what"),
    [
        (to_anthropic.request, {"messages": [], "n": 3}, "'n'"),
        (to_anthropic.request, {"messages": [], "response_format": {"type": "json_schema"}}, "response_format"),
        (to_anthropic.request, {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input_audio"),
        (to_anthropic.request, {"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "{not json"}}]}]}, "arguments"),
        (to_openai.request, {"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "document"),
        (to_openai.request, {"messages": [], "tools": [{"type": "bash_20250124", "name": "bash"}]}, "bash"),
    ],
)  # fmt: skip
def test_what_cannot_be_translated_is_a_clear_400(translate, body, what):
    with pytest.raises(ApiError) as exc:
        translate(body, 10) if translate is to_anthropic.request else translate(body, "max_tokens")
    assert exc.value.status == 400 and exc.value.code == "untranslatable_request"
    assert what in exc.value.message


def test_error_bodies_both_ways():
    ant = orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    assert orjson.loads(to_anthropic.error(529, ant))["error"]["message"] == "busy"
    azure = orjson.dumps({"error": {"code": "429", "message": "slow down"}})
    err = orjson.loads(to_openai.error(429, azure))
    assert err == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down", "code": "429"},
    }
    gemini = orjson.dumps(
        [{"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}]
    )
    assert orjson.loads(to_openai.error(400, gemini))["error"]["message"] == "bad"
    assert (
        orjson.loads(to_openai.error(502, b"<html>bad gateway"))["error"]["message"]
        == "<html>bad gateway"
    )
