"""Cost of the metrics hooks per request, in process: `python bench/metrics_cost.py`."""

import asyncio
import time
from types import SimpleNamespace as NS

from xaiproxy.context import RequestContext
from xaiproxy.metrics import Metrics
from xaiproxy.plugins import REQUEST_CTX

gw = NS(store=NS(queue_depth=0, last_flush_seconds=0, flushes=0, write_errors=0), state=NS(keys={}))
m = Metrics(gw)
owner = NS(id=1)
acc = NS(owner_acc=owner)
ctx = RequestContext(
    None,
    "r1",
    time.perf_counter(),
    "/v1/chat/completions",
    account=acc,
    model="gpt-4o-mini",
    upstream_model="gpt-4o-mini",
    prompt_tokens=12,
    completion_tokens=80,
    cost_n=12345,
    ttfb=0.01,
    attempt_log=[(1, 1, 200)],
)
N = 100000
t = time.perf_counter()
for _ in range(N):
    m.observe(ctx)
print(f"observe: {(time.perf_counter() - t) / N * 1e6:.2f} us")


class Req(dict):
    path = "/v1/chat/completions"
    match_info = None

    def get(self, k, d=None):
        return dict.get(self, k, d)


req = Req()
req[REQUEST_CTX] = ctx
resp = NS(status=200)


async def main():
    t = time.perf_counter()
    for _ in range(N):
        await m.on_prepare(req, resp)
    print(f"on_prepare: {(time.perf_counter() - t) / N * 1e6:.2f} us")


asyncio.run(main())
