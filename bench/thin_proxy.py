"""The floor under the gateway: an aiohttp server relaying to one upstream through
xaiproxy's own upstream pool (xaiproxy.pool, httptools), with no logic at all: no auth,
limits, reservation, billing, metrics or access log. `bench/wrk_cpu.sh` runs it with
XAI_THIN=1, so the gateway's own cost is its CPU per request minus this one's.

    python bench/thin_proxy.py --port 8001 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

from xaiproxy import settings
from xaiproxy.pool import Pool

HEAD = b"Content-Type: application/json\r\nAuthorization: Bearer sk-thin\r\n"
POOL = web.AppKey("pool", Pool)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    up = await request.app[POOL].request(
        request.app["upstream"], "POST", request.path, HEAD, body, False
    )
    headers = {"Content-Type": up.header(b"content-type") or "application/json"}
    if up.complete:  # a whole answer: one Response
        data = up.body_so_far()
        up.release()
        return web.Response(status=up.status, body=data, headers=headers)
    out = web.StreamResponse(status=up.status, headers=headers)
    await out.prepare(request)
    transport = request.transport
    up.stream(lambda piece: transport.write(b"%x\r\n%b\r\n" % (len(piece), piece)))
    while not await up.wait():  # never paused here: wrk reads as fast as it can
        pass
    up.release()
    await out.write_eof()
    return out


async def start_pool(app: web.Application) -> None:
    app[POOL] = Pool(settings.load(env={}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    app = web.Application()
    app["upstream"] = args.upstream
    app.on_startup.append(start_pool)
    app.router.add_post("/v1/chat/completions", relay)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
