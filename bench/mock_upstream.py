"""A fast mock of the OpenAI and Anthropic APIs for benchmarks.

Speaks POST /v1/chat/completions and POST /v1/messages, plain and streamed,
plus GET /v1/models. Streams are written in the providers' exact SSE framing.
Settings come from the command line, may be changed at run time with
POST /_mock/config (the bench runner does this between scenarios, so no proxy
has to forward our headers), and may be overridden per request with headers:

  x-mock-chunks, x-mock-chunk-size, x-mock-delay-ms, x-mock-ttfb-ms,
  x-mock-fault (500, 429, reset, hang, stall, malformed), x-mock-fault-rate,
  x-mock-retry-after

Run: python bench/mock_upstream.py --port 9000 --chunks 20 --delay-ms 0
"""

import argparse
import asyncio
import random
import socket
import struct
import time
from dataclasses import asdict, dataclass, fields, replace

import orjson
import uvloop
from aiohttp import web

FAULTS = ("", "500", "429", "reset", "hang", "stall", "malformed")
MODELS = ("gpt-4o-mini", "gpt-4o", "claude-3-5-haiku-latest", "claude-sonnet-4-0")
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
HEADER_MAP = {
    "x-mock-chunks": "chunks",
    "x-mock-chunk-size": "chunk_size",
    "x-mock-delay-ms": "delay_ms",
    "x-mock-ttfb-ms": "ttfb_ms",
    "x-mock-fault": "fault",
    "x-mock-fault-rate": "fault_rate",
    "x-mock-retry-after": "retry_after",
}


@dataclass(frozen=True)
class Knobs:
    chunks: int = 20
    chunk_size: int = 16  # characters of text per content chunk
    delay_ms: float = 0.0
    ttfb_ms: float = 0.0
    fault: str = ""
    fault_rate: float = 1.0  # share of requests that get `fault`
    retry_after: int = 1


KNOBS = web.AppKey("knobs", dict)
STATS = web.AppKey("stats", dict)


def coerce(name: str, raw) -> object:
    """Convert a header or JSON value to the knob's type (raises ValueError)."""
    kind = {f.name: f.type for f in fields(Knobs)}[name]
    value = kind(raw) if kind is not str else str(raw).strip().lower()
    if name == "fault" and value not in FAULTS:
        raise ValueError(f"fault must be one of {FAULTS}")
    return value


def request_knobs(request: web.Request) -> Knobs:
    knobs = request.app[KNOBS]["current"]
    over = {name: request.headers[h] for h, name in HEADER_MAP.items() if h in request.headers}
    if not over:
        return knobs
    return replace(knobs, **{k: coerce(k, v) for k, v in over.items()})


def pick_fault(knobs: Knobs) -> str:
    if knobs.fault and (knobs.fault_rate >= 1.0 or random.random() < knobs.fault_rate):
        return knobs.fault
    return ""


def sse(obj: dict, event: str | None = None) -> bytes:
    data = b"data: " + orjson.dumps(obj) + b"\n\n"
    return b"event: " + event.encode() + b"\n" + data if event else data


def openai_usage(prompt: int, completion: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def anthropic_usage(prompt: int, completion: int) -> dict:
    return {
        "input_tokens": prompt,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": completion,
    }


def text_piece(size: int) -> str:
    return ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]


def tokens_of(knobs: Knobs) -> int:
    return knobs.chunks * max(1, knobs.chunk_size // 4)


def openai_frames(model: str, knobs: Knobs, prompt: int, usage: bool) -> list[bytes]:
    """The whole OpenAI stream, one bytes object per SSE event."""
    base = {
        "id": f"chatcmpl-mock{random.getrandbits(48):x}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }
    tail = {"usage": None} if usage else {}

    def chunk(delta: dict, finish=None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [choice], **tail})

    frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
    frames += [chunk({"content": text_piece(knobs.chunk_size)})] * knobs.chunks
    frames.append(chunk({}, "stop"))
    if usage:
        frames.append(sse({**base, "choices": [], "usage": openai_usage(prompt, tokens_of(knobs))}))
    frames.append(b"data: [DONE]\n\n")
    return frames


def anthropic_frames(model: str, knobs: Knobs, prompt: int) -> list[bytes]:
    """The whole Anthropic Messages stream, one bytes object per SSE event."""
    message = {
        "id": f"msg_mock{random.getrandbits(48):x}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": anthropic_usage(prompt, 1),
    }
    delta = {"type": "content_block_delta", "index": 0}
    delta["delta"] = {"type": "text_delta", "text": text_piece(knobs.chunk_size)}
    frames = [
        sse({"type": "message_start", "message": message}, "message_start"),
        sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
        sse({"type": "ping"}, "ping"),
    ]
    frames += [sse(delta, "content_block_delta")] * knobs.chunks
    end = {"stop_reason": "end_turn", "stop_sequence": None}
    frames += [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse(
            {"type": "message_delta", "delta": end, "usage": {"output_tokens": tokens_of(knobs)}},
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    return frames


def openai_body(model: str, knobs: Knobs, prompt: int) -> dict:
    message = {
        "role": "assistant",
        "content": text_piece(knobs.chunk_size) * knobs.chunks,
        "refusal": None,
    }
    return {
        "id": f"chatcmpl-mock{random.getrandbits(48):x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": openai_usage(prompt, tokens_of(knobs)),
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }


def anthropic_body(model: str, knobs: Knobs, prompt: int) -> dict:
    return {
        "id": f"msg_mock{random.getrandbits(48):x}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text_piece(knobs.chunk_size) * knobs.chunks}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": anthropic_usage(prompt, tokens_of(knobs)),
    }


def error_response(status: int, anthropic: bool, retry_after: int = 0) -> web.Response:
    kinds = {429: ("rate_limit_error", "rate_limit_exceeded"), 500: ("api_error", "server_error")}
    kind, code = kinds.get(status, ("invalid_request_error", "invalid_request"))
    message = f"mock upstream answered {status}"
    if anthropic:
        body = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"message": message, "type": code, "param": None, "code": code}}
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response(
        body, status=status, headers=headers, dumps=lambda o: orjson.dumps(o).decode()
    )


def reset_connection(request: web.Request) -> None:
    """Close with SO_LINGER 0, so the peer sees a TCP RST, not a clean FIN."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if transport is not None:
        transport.abort()


async def stream_frames(request: web.Request, frames: list[bytes], knobs: Knobs, fault: str):
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    half = len(frames) // 2
    delay = knobs.delay_ms / 1000
    for i, frame in enumerate(frames):
        if i == half and fault:
            return await mid_stream_fault(request, resp, fault)
        if delay and i:
            await asyncio.sleep(delay)
        await resp.write(frame)
    await resp.write_eof()
    return resp


async def mid_stream_fault(request: web.Request, resp: web.StreamResponse, fault: str):
    if fault == "reset":
        reset_connection(request)
    elif fault == "stall":
        await asyncio.sleep(3600)
    elif fault == "malformed":
        await resp.write(b'data: {"id": "chatcmpl-broken", "choices": [{"delta": {"conte\n\n')
        await resp.write(b"this line has no field name\n\ndata: {]\n\n")
        await resp.write_eof()
    return resp


async def plain_answer(request: web.Request, body: bytes, fault: str):
    if fault not in ("reset", "stall", "malformed"):
        return web.Response(body=body, content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(request)
    if fault == "malformed":
        resp.content_length = None
        await resp.write(body[: len(body) // 2])
        return resp
    await resp.write(body[: len(body) // 2])
    if fault == "reset":
        reset_connection(request)
    else:
        await asyncio.sleep(3600)
    return resp


async def handle(request: web.Request, anthropic: bool):
    try:
        knobs = request_knobs(request)
        raw = await request.read()
        req = orjson.loads(raw)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        return web.json_response(
            {"error": {"message": str(exc), "type": "invalid_request_error"}}, status=400
        )
    request.app[STATS]["requests"] += 1
    fault = pick_fault(knobs)
    if knobs.ttfb_ms or fault == "hang":
        await asyncio.sleep(3600 if fault == "hang" else knobs.ttfb_ms / 1000)
    if fault in ("500", "429"):
        return error_response(int(fault), anthropic, knobs.retry_after if fault == "429" else 0)
    model = str(req.get("model") or MODELS[0])
    prompt = max(1, len(raw) // 4)
    if req.get("stream"):
        if anthropic:
            frames = anthropic_frames(model, knobs, prompt)
        else:
            usage = bool((req.get("stream_options") or {}).get("include_usage"))
            frames = openai_frames(model, knobs, prompt, usage)
        return await stream_frames(request, frames, knobs, fault)
    body = (anthropic_body if anthropic else openai_body)(model, knobs, prompt)
    return await plain_answer(request, orjson.dumps(body), fault)


async def chat(request: web.Request):
    return await handle(request, anthropic=False)


async def messages(request: web.Request):
    return await handle(request, anthropic=True)


async def models(request: web.Request):
    data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "mock"} for m in MODELS]
    return web.json_response({"object": "list", "data": data})


async def config(request: web.Request):
    """GET shows the knobs; POST {"delay_ms": 20, ...} changes them."""
    state = request.app[KNOBS]
    if request.method == "POST":
        try:
            changes = {k: coerce(k, v) for k, v in orjson.loads(await request.read()).items()}
            state["current"] = replace(state["current"], **changes)
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({**asdict(state["current"]), **request.app[STATS]})


def make_app(knobs: Knobs) -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[KNOBS] = {"current": knobs}
    app[STATS] = {"requests": 0}
    for prefix in ("/v1", ""):
        app.router.add_post(prefix + "/chat/completions", chat)
        app.router.add_post(prefix + "/messages", messages)
        app.router.add_get(prefix + "/models", models)
    app.router.add_route("*", "/_mock/config", config)
    return app


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--chunks", type=int, default=Knobs.chunks, help="content chunks per stream")
    p.add_argument("--chunk-size", type=int, default=Knobs.chunk_size, help="characters per chunk")
    p.add_argument("--delay-ms", type=float, default=0.0, help="pause between chunks")
    p.add_argument("--ttfb-ms", type=float, default=0.0, help="pause before the response headers")
    p.add_argument("--fault", default="", choices=FAULTS)
    p.add_argument("--fault-rate", type=float, default=1.0, help="share of requests given --fault")
    p.add_argument("--retry-after", type=int, default=1, help="Retry-After for the 429 fault")
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    knobs = Knobs(
        a.chunks, a.chunk_size, a.delay_ms, a.ttfb_ms, a.fault, a.fault_rate, a.retry_after
    )
    app = make_app(knobs)
    loop = uvloop.new_event_loop()
    web.run_app(app, host=a.host, port=a.port, access_log=None, print=None, backlog=4096, loop=loop)


if __name__ == "__main__":
    main()
