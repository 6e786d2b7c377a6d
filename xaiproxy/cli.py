"""Command line: `xaiproxy serve` runs the gateway; users/keys/config/bill manage it (admin.py)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

from . import __version__, admin, pricing, speedups, tools
from . import settings as settings_mod


def _banner(settings, root_key: str | None, speed: str = "") -> str:
    url = f"http://{settings.host}:{settings.port}"
    lines = [
        f"xaiproxy {__version__} listening on {url}",
        f"  database: {settings_mod.mask_url(settings.db)}",
    ]
    if settings.redis:
        lines.append(
            f"  redis: {settings_mod.mask_url(settings.redis)}"
            " (not used yet: it serves the PostgreSQL store, coming)"
        )
    if speed:
        lines.append(speed)
    if root_key:
        lines += [
            "",
            "  Created the root account. Its key is shown ONCE; store it now:",
            f"    {root_key}",
            "",
            "  Try it:",
            f'    export XAI_KEY="{root_key}"',
            f'    curl -s {url}/dashboard/x-user-status -H "Authorization: Bearer $XAI_KEY"',
            f"    curl -s {url}/x-keys -H \"Authorization: Bearer $XAI_KEY\" -H 'Content-Type: application/json' \\",
            '      -d \'{"SecretKey": "sk-your-openai-key", "Level": 1, "Provider": "https://api.openai.com"}\'',
        ]
    else:
        lines.append("  root key: as set before (XAI_ROOT_KEY or the key printed on first start)")
    lines.append(f"  OpenAI SDK: OpenAI(base_url='{url}/v1', api_key=<your key>)")
    return "\n".join(lines)


def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from . import accesslog, server  # here, so admin commands start fast
    from .app import GATEWAY, create_app
    from .errors import StartError

    try:
        settings = settings_mod.load(args.config, host=args.host, port=args.port, db=args.db)
    except settings_mod.SettingsError as exc:
        print(f"xaiproxy: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - non-POSIX
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = create_app(settings)
    except (StartError, pricing.PricesError) as exc:  # one line, no traceback
        print(f"xaiproxy: {exc}", file=sys.stderr)
        return 2

    async def announce(app: web.Application) -> None:
        speed = speedups.banner_line(speedups.check(asyncio.get_running_loop()))
        print(_banner(settings, app[GATEWAY].new_root_key, speed), flush=True)
        # Long-lived state is loaded: keep it out of every collection, and collect
        # the young generation less often (requests allocate many short-lived objects).
        gc.collect()
        gc.freeze()
        gc.set_threshold(2_000, 20, 50)

    app.on_startup.append(announce)
    try:
        loop.run_until_complete(
            server.serve(
                app,
                settings.host,
                settings.port,
                settings.shutdown_grace,
                **accesslog.runner_kwargs(settings),
            )
        )
    except StartError as exc:  # e.g. a plugin migration that fails
        print(f"xaiproxy: {exc}", file=sys.stderr)
        return 2
    accesslog.close_logger(settings.access_log)  # flush the last lines
    loop.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xaiproxy", description="A lean AI API gateway")
    parser.add_argument("--version", action="version", version=f"xaiproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway (options also read XAI_* variables)")
    p.add_argument("--host", help="address to bind (XAI_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (XAI_PORT, default 8080)")
    p.add_argument(
        "--db", help="SQLite file or postgresql:// URL (XAI_DB, default ./data/xaiproxy.db)"
    )
    p.add_argument("--config", help="TOML config file (XAI_CONFIG; `xaiproxy init` writes one)")
    p.set_defaults(func=serve)
    tools.add_commands(sub)
    admin.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
