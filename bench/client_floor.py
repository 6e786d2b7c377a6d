"""The aiohttp client's own cost per request: the part of a proxy's CPU no gateway logic adds.

Run the mock first (`python bench/mock_upstream.py --port 19000`), then
`python bench/client_floor.py [--url URL] [-n 3000]`. Prints CPU microseconds per
request of this process: an aiohttp ClientSession with the options xaiproxy uses
(pooled, no decompression, no cookie jar), 20 requests in flight.
"""

import argparse
import asyncio
import time

import aiohttp
import orjson
import uvloop

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
HEADERS = {"Authorization": "Bearer sk-x", "Content-Type": "application/json"}


async def measure(url: str, n: int, concurrency: int = 20) -> float:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    async with session:

        async def one() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as resp:
                await resp.read()

        for _ in range(200):  # warm the pool
            await one()
        started = time.process_time()
        for _ in range(n // concurrency):
            await asyncio.gather(*(one() for _ in range(concurrency)))
        return (time.process_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:19000/v1/chat/completions")
    parser.add_argument("-n", type=int, default=3000)
    args = parser.parse_args()
    print(f"aiohttp client: {uvloop.run(measure(args.url, args.n)):.0f} us CPU per request")


if __name__ == "__main__":
    main()
