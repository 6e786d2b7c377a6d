"""The usage scanners, fed raw chunks as the network cuts them."""

from __future__ import annotations

import orjson

from xaiproxy import providers, sse

OPENAI, ANTHROPIC = providers.OPENAI.usage, providers.ANTHROPIC.usage


def chunk(obj) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


STREAM = (
    chunk({"choices": [{"delta": {"content": "a"}}], "usage": None})
    + chunk({"choices": [{"delta": {"content": "b"}}], "usage": None})
    + chunk(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }
    )
    + b"data: [DONE]\n\n"
)


def feed_split(scanner, data: bytes, size: int) -> bytes:
    out = b"".join(scanner.feed(data[i : i + size]) for i in range(0, len(data), size))
    return out + scanner.finish()


def test_usage_found_whatever_the_chunking():
    for size in (1, 7, 64, len(STREAM)):
        s = sse.StreamScanner(OPENAI)
        out = feed_split(s, STREAM, size)
        assert out == STREAM  # without strip, every byte goes out as it came
        assert providers.normalize_usage(OPENAI, s.usage) == (9, 2, 4, 0)


def test_strip_cuts_only_the_usage_chunk():
    for size in (1, 5, 33, len(STREAM)):
        s = sse.StreamScanner(OPENAI, strip=True)
        out = feed_split(s, STREAM, size)
        assert b'"usage":{' not in out
        assert out == STREAM.replace(STREAM.split(b"\n\n")[2] + b"\n\n", b"")
        assert s.usage["completion_tokens"] == 2


def test_crlf_framing():
    data = STREAM.replace(b"\n\n", b"\r\n\r\n")
    s = sse.StreamScanner(OPENAI, strip=True)
    out = feed_split(s, data, 10)
    assert b"prompt_tokens" not in out and out.endswith(b"[DONE]\r\n\r\n")
    assert s.usage["prompt_tokens"] == 9


def test_anthropic_usage_merges_start_and_delta():
    start = {
        "type": "message_start",
        "message": {
            "usage": {
                "input_tokens": 10,
                "cache_read_input_tokens": 5,
                "cache_creation_input_tokens": 3,
                "output_tokens": 1,
            }
        },
    }
    data = (
        b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n"
        b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"x"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":42}}\n\n'
    )
    s = sse.StreamScanner(ANTHROPIC)
    feed_split(s, data, 11)
    assert providers.normalize_usage(ANTHROPIC, s.usage) == (18, 42, 5, 3)


def test_unterminated_last_event_is_scanned():
    s = sse.StreamScanner(OPENAI, strip=True)
    data = (
        chunk({"choices": [{"delta": {}}]})
        + chunk({"choices": [], "usage": {"prompt_tokens": 1}})[:-2]
    )
    assert feed_split(s, data, 1000) == chunk({"choices": [{"delta": {}}]})
    assert s.usage == {"prompt_tokens": 1}


def test_body_scanner_small_and_large():
    body = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    s = sse.BodyScanner(OPENAI)
    feed_split(s, body, 5)
    assert s.usage == {"prompt_tokens": 3, "completion_tokens": 4}
    big = orjson.dumps(
        {"data": [{"embedding": [0.5] * 100_000}], "usage": {"prompt_tokens": 7, "x": {"y": 1}}}
    )
    s = sse.BodyScanner(OPENAI)
    feed_split(s, big, 4096)
    assert s.usage == {"prompt_tokens": 7, "x": {"y": 1}}
    assert s.size == len(big)


def test_broken_json_gives_no_usage():
    s = sse.BodyScanner(OPENAI)
    feed_split(s, b'{"usage": {"prompt_tokens": 3', 4)
    assert s.usage is None and s.estimate_completion() >= 1
    s = sse.StreamScanner(OPENAI)
    feed_split(s, b'data: {"usage": {broken\n\n', 3)
    assert s.usage is None


def test_error_events_are_well_formed():
    ev = providers.OPENAI.error_event(502, "upstream_broken", "cut")
    assert ev.startswith(b"data: ") and ev.endswith(b"\n\n")
    assert orjson.loads(ev[6:])["error"]["code"] == "upstream_broken"
    ev = providers.ANTHROPIC.error_event(504, "upstream_timeout", "stalled")
    assert ev.startswith(b"event: error\ndata: ")
    assert orjson.loads(ev.split(b"data: ")[1])["type"] == "error"
