"""An Anthropic Messages client served by an OpenAI Chat Completions upstream.

`request` turns the client's Messages body into a Chat Completions body; `answer` turns a
whole chat.completion into a Message; `Stream` turns chat.completion.chunk events into
Message events as they arrive; `error` reshapes an OpenAI error body.
"""

from __future__ import annotations

import orjson

from ..errors import TYPES
from .common import as_int, loads, sse_event, text_of, untranslatable

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
CHOICES = {"auto": "auto", "any": "required", "none": "none"}


# -- request -----------------------------------------------------------------------
def request(body: dict, max_tokens_field: str) -> dict:
    messages = _system(body.get("system"))
    items = body.get("messages")
    if not isinstance(items, list):
        raise untranslatable("'messages' that is not a list")
    for msg in items:
        if not isinstance(msg, dict):
            raise untranslatable("a message that is not an object")
        if msg.get("role") == "assistant":
            messages.append(_assistant(msg.get("content")))
        elif msg.get("role") == "user":
            messages.extend(_user(msg.get("content")))
        else:
            raise untranslatable(f"a message with role {str(msg.get('role'))[:20]!r}")
    out: dict = {"model": body.get("model"), "messages": messages}
    if as_int(body.get("max_tokens")) > 0:
        out[max_tokens_field] = body["max_tokens"]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    for name in ("temperature", "top_p"):
        if isinstance(body.get(name), int | float):
            out[name] = body[name]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # the Message events carry usage
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        out["user"] = user
    _tools(body, out)
    return out


def _system(system) -> list[dict]:
    if isinstance(system, list):
        for block in system:
            if not isinstance(block, dict) or block.get("type") != "text":
                raise untranslatable("a system block that is not text")
    text = text_of(system)
    return [{"role": "system", "content": text}] if text else []


def _blocks(content) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise untranslatable("message content that is not text or a list of blocks")
    return content


def _user(content) -> list[dict]:
    """Tool results become `tool` messages (first, as OpenAI wants); the rest one user turn."""
    results, parts = [], []
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "tool_result":
            results.append(_tool_result(block))
        elif kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        else:
            raise untranslatable(f"a content block of type {str(kind)[:30]!r}")
    if parts and all(p["type"] == "text" for p in parts):
        parts = ["".join(p["text"] for p in parts)]
    turn = (
        [{"role": "user", "content": parts[0] if isinstance(parts[0], str) else parts}]
        if parts
        else []
    )
    return results + turn


def _tool_result(block: dict) -> dict:
    content = block.get("content")
    if isinstance(content, list) and any(
        b.get("type") != "text" for b in content if isinstance(b, dict)
    ):
        raise untranslatable("a tool result holding anything but text")
    text = text_of(content)
    if block.get("is_error"):
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text}


def _image_url(block: dict) -> str:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    if source.get("type") == "url":
        return str(source.get("url", ""))
    raise untranslatable(f"an image source of type {str(source.get('type'))[:30]!r}")


def _assistant(content) -> dict:
    text, calls = [], []
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "text":
            text.append(str(block.get("text", "")))
        elif kind == "tool_use":
            fn = {
                "name": block.get("name", ""),
                "arguments": orjson.dumps(block.get("input", {})).decode(),
            }
            calls.append({"id": str(block.get("id", "")), "type": "function", "function": fn})
        elif kind not in ("thinking", "redacted_thinking"):
            raise untranslatable(f"an assistant block of type {str(kind)[:30]!r}")
    msg: dict = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tools(body: dict, out: dict) -> None:
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t) for t in tools]
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name", "")}}
    elif kind in CHOICES:
        out["tool_choice"] = CHOICES[kind]
    if choice.get("disable_parallel_tool_use") is True and tools:
        out["parallel_tool_calls"] = False


def _tool(tool) -> dict:
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
        kind = tool.get("type") if isinstance(tool, dict) else tool
        raise untranslatable(f"the server tool {str(kind)[:40]!r}")
    fn = {
        "name": tool.get("name", ""),
        "parameters": tool.get("input_schema") or {"type": "object"},
    }
    if tool.get("description"):
        fn["description"] = tool["description"]
    return {"type": "function", "function": fn}


# -- answer ------------------------------------------------------------------------
def usage(u: dict) -> dict:
    cached = as_int((u.get("prompt_tokens_details") or {}).get("cached_tokens"))
    return {
        "input_tokens": max(as_int(u.get("prompt_tokens")) - cached, 0),
        "output_tokens": as_int(u.get("completion_tokens")),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def _msg_id(chat_id) -> str:
    return "msg_" + str(chat_id or "").removeprefix("chatcmpl-")


def answer(obj: dict) -> dict:
    choices = obj.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    content = []
    text = text_of(msg.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        args = loads(fn.get("arguments") or "{}")
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": fn.get("name", ""),
                "input": args if isinstance(args, dict) else {},
            }
        )
    return {
        "id": _msg_id(obj.get("id")),
        "type": "message",
        "role": "assistant",
        "model": obj.get("model", ""),
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"),
        "stop_sequence": None,
        "usage": usage(obj.get("usage") or {}),
    }


class Stream:
    """chat.completion.chunk events in, Anthropic Message events out, one event at a time.

    The closing message_delta waits for the usage chunk that follows the finish reason
    (the request asked for include_usage), so it carries the upstream's counts.
    """

    __slots__ = ("started", "block", "kind", "tools", "finish", "usage", "done")

    def __init__(self, usage_chunk: bool = False) -> None:  # Message events always carry usage
        self.started = False
        self.block = -1  # index of the open content block
        self.kind = ""  # "text" or "tool:<n>" of the open block
        self.tools: dict[int, int] = {}  # tool call index -> content block index
        self.finish = None
        self.usage: dict = {}
        self.done = False

    def event(self, name: str, data: bytes) -> bytes:
        if data == b"[DONE]":
            return self.end()
        obj = loads(data)
        if not isinstance(obj, dict):
            return b""
        if isinstance(obj.get("error"), dict):
            return _error_event(obj["error"])
        out = b"" if self.started else self._start(obj)
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        for choice in obj.get("choices") or ():
            out += self._delta(choice.get("delta") or {})
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
                out += self._close()
        return out

    def _start(self, obj: dict) -> bytes:
        self.started = True
        msg = {
            "id": _msg_id(obj.get("id")),
            "type": "message",
            "role": "assistant",
            "model": obj.get("model", ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return sse_event("message_start", {"type": "message_start", "message": msg})

    def _open(self, kind: str, block: dict) -> bytes:
        out = self._close()
        self.block += 1
        self.kind = kind
        start = {"type": "content_block_start", "index": self.block, "content_block": block}
        return out + sse_event("content_block_start", start)

    def _close(self) -> bytes:
        if not self.kind:
            return b""
        self.kind = ""
        stop = {"type": "content_block_stop", "index": self.block}
        return sse_event("content_block_stop", stop)

    def _delta(self, delta: dict) -> bytes:
        out = b""
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self.kind != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out += self._block_delta({"type": "text_delta", "text": text})
        for call in delta.get("tool_calls") or ():
            out += self._tool_delta(call)
        return out

    def _tool_delta(self, call: dict) -> bytes:
        n = as_int(call.get("index"))
        fn = call.get("function") or {}
        out = b""
        if self.kind != f"tool:{n}":
            block = {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": fn.get("name", ""),
                "input": {},
            }
            out = self._open(f"tool:{n}", block)
        if fn.get("arguments"):
            out += self._block_delta({"type": "input_json_delta", "partial_json": fn["arguments"]})
        return out

    def _block_delta(self, delta: dict) -> bytes:
        event = {"type": "content_block_delta", "index": self.block, "delta": delta}
        return sse_event("content_block_delta", event)

    def end(self) -> bytes:
        """[DONE], or a clean end after the finish reason: close the message."""
        if self.done or self.finish is None:
            return b""
        self.done = True
        delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": STOP_REASONS.get(self.finish, "end_turn"),
                "stop_sequence": None,
            },
            "usage": usage(self.usage),
        }
        return (
            self._close()
            + sse_event("message_delta", delta)
            + sse_event("message_stop", {"type": "message_stop"})
        )


def _anthropic_error(err: dict, status: int = 0) -> dict:
    kind = err.get("type")
    if not isinstance(kind, str) or not kind:
        kind = TYPES.get(status, "api_error")  # Azure and Gemini send a code, not a type
    out = {"type": kind, "message": str(err.get("message", ""))}
    if err.get("code") is not None:
        out["code"] = str(err["code"])
    return out


def _error_event(err: dict) -> bytes:
    return sse_event("error", {"type": "error", "error": _anthropic_error(err)})


def error(status: int, body: bytes) -> bytes:
    """An OpenAI-shaped error body (Azure's and Gemini's variants too) as Anthropic's."""
    obj = loads(body)
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]  # Gemini wraps its error in a list
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):
        err = {"message": body[:2000].decode(errors="replace")}
    return orjson.dumps({"type": "error", "error": _anthropic_error(err, status)})
