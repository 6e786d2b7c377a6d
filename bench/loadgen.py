"""Closed-loop load generator for OpenAI and Anthropic style endpoints.

N workers each send requests back to back until the time (or request budget)
is spent; stragglers are then given a grace period to finish. Every stream
must end properly (`data: [DONE]` for OpenAI, `message_stop` for Anthropic)
or it counts as an error.

Run: python bench/loadgen.py http://127.0.0.1:9000 --concurrency 50 --stream
"""

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson
import uvloop

OPENAI_END = b"data: [DONE]"
ANTHROPIC_END = b"event: message_stop"


@dataclass
class Load:
    url: str  # base URL, e.g. http://127.0.0.1:8080
    key: str = "sk-bench"
    stream: bool = True
    anthropic: bool = False
    model: str = "gpt-4o-mini"
    concurrency: int = 50
    duration: float = 5.0
    max_requests: int = 0  # stop after this many (0: only the duration counts)
    timeout: float = 60.0
    grace: float = 15.0  # how long in-flight requests may finish after the deadline
    headers: dict = field(default_factory=dict)


@dataclass
class Result:
    completed: int = 0
    elapsed: float = 0.0
    latencies: list = field(default_factory=list)  # seconds, successful requests
    ttfbs: list = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)

    @property
    def rps(self) -> float:
        return self.completed / self.elapsed if self.elapsed else 0.0

    def merge(self, other: "Result") -> None:
        self.completed += other.completed
        self.elapsed += other.elapsed
        self.latencies += other.latencies
        self.ttfbs += other.ttfbs
        self.errors.update(other.errors)


def percentile(values: list, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_request(load: Load) -> tuple[str, dict, bytes]:
    body = {"model": load.model, "max_tokens": 256, "stream": load.stream}
    body["messages"] = [{"role": "user", "content": "Say hello to the benchmark."}]
    # identity: no target spends CPU on compression, and the body check sees plain bytes
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **load.headers}
    if load.anthropic:
        headers |= {"x-api-key": load.key, "anthropic-version": "2023-06-01"}
        return load.url + "/v1/messages", headers, orjson.dumps(body)
    if load.stream:
        body["stream_options"] = {"include_usage": True}
    headers["Authorization"] = f"Bearer {load.key}"
    return load.url + "/v1/chat/completions", headers, orjson.dumps(body)


def stream_ended(tail: bytes, anthropic: bool) -> bool:
    if anthropic:
        return ANTHROPIC_END in tail
    return tail.rstrip().endswith(OPENAI_END)


async def one_request(session, load: Load, req: tuple, result: Result) -> None:
    url, headers, body = req
    start = time.perf_counter()
    first = 0.0
    tail = b""
    async with session.post(url, data=body, headers=headers) as resp:
        async for chunk in resp.content.iter_any():
            if not first:
                first = time.perf_counter()
            tail = (tail + chunk)[-256:]
    end = time.perf_counter()
    if resp.status != 200:
        result.errors[f"http_{resp.status}"] += 1
    elif load.stream and not stream_ended(tail, load.anthropic):
        result.errors["stream_not_ended"] += 1
    elif not load.stream and not tail.rstrip().endswith(b"}"):
        result.errors["truncated_body"] += 1
    else:
        result.completed += 1
        result.latencies.append(end - start)
        result.ttfbs.append((first or end) - start)


async def worker(
    session, load: Load, req: tuple, result: Result, deadline: float, budget: list
) -> None:
    while time.perf_counter() < deadline:
        if load.max_requests:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        try:
            await one_request(session, load, req, result)
        except TimeoutError:
            result.errors["timeout"] += 1
        except aiohttp.ClientError as exc:
            result.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.01)  # a refused connection must not become a busy loop


async def run_load(load: Load) -> Result:
    """Drive `load` and return what was measured."""
    result = Result()
    req = build_request(load)
    connector = aiohttp.TCPConnector(limit=load.concurrency, limit_per_host=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=load.timeout)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        start = time.perf_counter()
        deadline = start + (load.duration if load.duration > 0 else 1e9)
        budget = [load.max_requests]
        tasks = [
            asyncio.create_task(worker(session, load, req, result, deadline, budget))
            for _ in range(load.concurrency)
        ]
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - start) + load.grace)
        for task in pending:
            task.cancel()
        result.errors["unfinished"] += len(pending)
        result.elapsed = time.perf_counter() - start
        await asyncio.gather(*pending, return_exceptions=True)
    result.errors = +result.errors  # drop zero counts
    return result


def summary(result: Result) -> dict:
    ms = 1000.0
    return {
        "requests": result.completed,
        "rps": round(result.rps, 1),
        "p50_ms": round(percentile(result.latencies, 0.50) * ms, 2),
        "p99_ms": round(percentile(result.latencies, 0.99) * ms, 2),
        "ttfb_p50_ms": round(percentile(result.ttfbs, 0.50) * ms, 2),
        "ttfb_p99_ms": round(percentile(result.ttfbs, 0.99) * ms, 2),
        "errors": dict(result.errors),
    }


def parse_args(argv=None) -> Load:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("url", help="base URL of the target, e.g. http://127.0.0.1:8080")
    p.add_argument("--key", default="sk-bench")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--anthropic", action="store_true", help="POST /v1/messages instead")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--concurrency", "-c", type=int, default=50)
    p.add_argument("--duration", "-d", type=float, default=5.0, help="seconds (0: only --requests)")
    p.add_argument("--requests", "-n", type=int, default=0, help="stop after this many requests")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("-H", "--header", action="append", default=[], help="extra 'Name: value' header")
    a = p.parse_args(argv)
    headers = dict(h.split(":", 1) for h in a.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    return Load(
        a.url.rstrip("/"), a.key, a.stream, a.anthropic, a.model, a.concurrency,
        a.duration, a.requests, a.timeout, headers=headers,
    )  # fmt: skip


def main(argv=None) -> None:
    load = parse_args(argv)
    result = uvloop.run(run_load(load))
    print(orjson.dumps(summary(result), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
