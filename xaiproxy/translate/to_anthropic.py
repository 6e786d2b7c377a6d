"""An OpenAI Chat Completions client served by an Anthropic Messages upstream.

`request` turns the client's body into a Messages body; `answer` turns a whole Message
into a chat.completion; `Stream` turns Message events into chat.completion.chunk events
as they arrive; `error` reshapes an Anthropic error body.
"""

from __future__ import annotations

import time

import orjson

from .common import as_int, loads, sse_data, text_of, untranslatable

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}
# Chat fields with no Messages counterpart that change what comes back: refused, not dropped.
REFUSED = {
    "n": lambda v: v not in (None, 1),
    "logprobs": lambda v: bool(v),
    "top_logprobs": lambda v: v is not None,
    "audio": lambda v: v is not None,
    "modalities": lambda v: v not in (None, ["text"]),
    "response_format": lambda v: isinstance(v, dict) and v.get("type") not in (None, "text"),
    "functions": lambda v: v is not None,
}


# -- request -----------------------------------------------------------------------
def request(body: dict, default_max_tokens: int) -> dict:
    for name, refused in REFUSED.items():
        if refused(body.get(name)):
            raise untranslatable(f"'{name}'")
    system, messages = _messages(body.get("messages"))
    out: dict = {"model": body.get("model"), "messages": messages}
    if system:
        out["system"] = system
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    out["max_tokens"] = cap if as_int(cap) > 0 else default_max_tokens
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(body.get("temperature"), int | float):
        out["temperature"] = min(body["temperature"], 1.0)  # Anthropic's range is 0..1
    if isinstance(body.get("top_p"), int | float):
        out["top_p"] = body["top_p"]
    if body.get("stream") is True:
        out["stream"] = True
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    _tools(body, out)
    return out


def _messages(items) -> tuple[str, list[dict]]:
    if not isinstance(items, list):
        raise untranslatable("'messages' that is not a list")
    system, out = [], []
    for msg in items:
        if not isinstance(msg, dict):
            raise untranslatable("a message that is not an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.append(text_of(msg.get("content")))
        elif role == "user":
            _append(out, "user", _user_blocks(msg.get("content")))
        elif role == "assistant":
            _append(out, "assistant", _assistant_blocks(msg))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": str(msg.get("tool_call_id", "")),
                "content": text_of(msg.get("content")),
            }
            _append(out, "user", [result])
        else:
            raise untranslatable(f"a message with role {str(role)[:20]!r}")
    return "\n\n".join(s for s in system if s), out


def _append(out: list[dict], role: str, blocks: list[dict]) -> None:
    """Messages alternate roles: consecutive turns of one role become one turn."""
    if not blocks:
        return
    if out and out[-1]["role"] == role:
        out[-1]["content"].extend(blocks)
    else:
        out.append({"role": role, "content": blocks})


def _user_blocks(content) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        return []
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            blocks.append(_image((part.get("image_url") or {}).get("url", "")))
        else:
            raise untranslatable(f"a content part of type {str(kind)[:30]!r}")
    return blocks


def _image(url: str) -> dict:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media = head[5:].split(";")[0]
        if ";base64" not in head or not media.startswith("image/"):
            raise untranslatable("an image data URL that is not base64")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _assistant_blocks(msg: dict) -> list[dict]:
    text = text_of(msg.get("content"))
    blocks = [{"type": "text", "text": text}] if text else []
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        args = fn.get("arguments") or "{}"
        parsed = loads(args)
        if not isinstance(parsed, dict):
            raise untranslatable("tool call arguments that are not a JSON object")
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id", "")),
                "name": fn.get("name", ""),
                "input": parsed,
            }
        )
    return blocks


def _tools(body: dict, out: dict) -> None:
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t) for t in tools]
    choice = body.get("tool_choice")
    mapped = None
    if choice == "auto":
        mapped = {"type": "auto"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif choice == "none":
        mapped = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        mapped = {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    if body.get("parallel_tool_calls") is False and tools:
        mapped = {**(mapped or {"type": "auto"}), "disable_parallel_tool_use": True}
    if mapped is not None and (tools or mapped["type"] == "none"):
        out["tool_choice"] = mapped


def _tool(tool) -> dict:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise untranslatable("a tool that is not a function")
    fn = tool.get("function") or {}
    out = {
        "name": fn.get("name", ""),
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


# -- answer ------------------------------------------------------------------------
def usage(u: dict) -> dict:
    cached = as_int(u.get("cache_read_input_tokens"))
    prompt = as_int(u.get("input_tokens")) + cached + as_int(u.get("cache_creation_input_tokens"))
    completion = as_int(u.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def answer(msg: dict) -> dict:
    text, calls = [], []
    for block in msg.get("content") or []:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(
                {"id": block.get("id", ""), "type": "function", "function": _function(block)}
            )
    message: dict = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": _chat_id(msg.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": msg.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": STOP_REASONS.get(msg.get("stop_reason"), "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage(msg.get("usage") or {}),
    }


def _chat_id(msg_id) -> str:
    return "chatcmpl-" + str(msg_id or "").removeprefix("msg_")


def _call(block: dict, index: int) -> dict:
    return {"index": index, "id": block.get("id", ""), "type": "function"}


def _function(block: dict) -> dict:
    return {
        "name": block.get("name", ""),
        "arguments": orjson.dumps(block.get("input", {})).decode(),
    }


class Stream:
    """Anthropic Message events in, chat.completion.chunk events out, one event at a time."""

    __slots__ = ("usage_chunk", "base", "tools", "usage", "finish", "done")

    def __init__(self, usage_chunk: bool) -> None:
        self.usage_chunk = usage_chunk  # the client asked for stream_options.include_usage
        self.base: dict = {}
        self.tools: dict[int, int] = {}  # content block index -> tool call index
        self.usage: dict = {}
        self.finish = None
        self.done = False

    def event(self, name: str, data: bytes) -> bytes:
        obj = loads(data)
        if not isinstance(obj, dict):
            return b""
        kind = obj.get("type") or name
        handler = getattr(self, "_" + kind, None) if kind.isidentifier() else None
        return handler(obj) if handler else b""

    def _chunk(self, delta: dict, finish=None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return sse_data({**self.base, "choices": [choice]})

    def _message_start(self, obj: dict) -> bytes:
        msg = obj.get("message") or {}
        self.base = {
            "id": _chat_id(msg.get("id")),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": msg.get("model", ""),
        }
        self.usage = dict(msg.get("usage") or {})
        return self._chunk({"role": "assistant", "content": ""})

    def _content_block_start(self, obj: dict) -> bytes:
        block = obj.get("content_block") or {}
        if block.get("type") != "tool_use":
            return b""
        n = self.tools[as_int(obj.get("index"))] = len(self.tools)
        call = _call(block, n) | {"function": {"name": block.get("name", ""), "arguments": ""}}
        return self._chunk({"tool_calls": [call]})

    def _content_block_delta(self, obj: dict) -> bytes:
        delta = obj.get("delta") or {}
        if delta.get("type") == "text_delta":
            return self._chunk({"content": delta.get("text", "")})
        if delta.get("type") == "input_json_delta":
            n = self.tools.get(as_int(obj.get("index")), 0)
            args = {"index": n, "function": {"arguments": delta.get("partial_json", "")}}
            return self._chunk({"tool_calls": [args]})
        return b""  # thinking and signatures have no Chat Completions form

    def _message_delta(self, obj: dict) -> bytes:
        self.usage.update(obj.get("usage") or {})
        self.finish = STOP_REASONS.get((obj.get("delta") or {}).get("stop_reason"), "stop")
        return self._chunk({}, self.finish)

    def _message_stop(self, obj: dict) -> bytes:
        self.done = True
        out = b""
        if self.usage_chunk:
            out = sse_data({**self.base, "choices": [], "usage": usage(self.usage)})
        return out + b"data: [DONE]\n\n"

    def _error(self, obj: dict) -> bytes:
        err = obj.get("error") or {}
        return sse_data({"error": _openai_error(err)})

    def end(self) -> bytes:
        return b""  # an upstream that ends without message_stop is left unterminated


def _openai_error(err: dict) -> dict:
    kind = str(err.get("type") or "api_error")
    return {"message": str(err.get("message", "")), "type": kind, "code": kind, "param": None}


def error(status: int, body: bytes) -> bytes:
    """An Anthropic error body as OpenAI's error shape."""
    obj = loads(body)
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):
        err = {"type": "api_error", "message": body[:2000].decode(errors="replace")}
    return orjson.dumps({"error": _openai_error(err)})
