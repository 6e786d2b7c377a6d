"""The deployment recipes that can run here: deploy/nginx.conf in front of a gateway."""

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.fakes import add_key, chat
from tests.procs import free_port

pytest_plugins = ["tests.fakes_fixtures"]

pytestmark = pytest.mark.timeout(60)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def nginx_conf(tmp: Path, listen: int, gateway: int) -> Path:
    """deploy/nginx.conf as shipped, ports changed, inside a minimal main config."""
    site = (DEPLOY / "nginx.conf").read_text()
    assert "server 127.0.0.1:8080;" in site and "listen 80;" in site
    site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{gateway};")
    (tmp / "site.conf").write_text(site.replace("listen 80;", f"listen 127.0.0.1:{listen};"))
    temp = " ".join(
        f"{name}_temp_path {tmp / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = tmp / "nginx.conf"
    main.write_text(
        f"daemon off; master_process off; pid {tmp / 'nginx.pid'}; error_log {tmp / 'error.log'};\n"
        f"events {{}}\nhttp {{ access_log off; {temp} include {tmp / 'site.conf'}; }}\n"
    )
    return main


async def test_nginx_recipe_is_valid_and_relays_each_chunk_as_it_comes(
    make_gateway, upstream, tmp_path
):
    api = await make_gateway()
    await add_key(api, upstream)
    port = free_port()
    conf = nginx_conf(tmp_path, port, int(api.url.rsplit(":", 1)[1]))
    nginx = await asyncio.create_subprocess_exec(
        "nginx", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {
            "Authorization": f"Bearer {api.root}",
            "x-fake-chunks": "4",
            "x-fake-delay": "0.4",
        }
        async with aiohttp.ClientSession() as s:
            for _ in range(100):  # until nginx listens
                try:
                    async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            started = time.monotonic()
            async with s.post(url, json=chat(stream=True), headers=headers) as r:
                assert r.status == 200
                seen = [(time.monotonic() - started, line) async for line in r.content]
    finally:
        nginx.terminate()
        await nginx.wait()
    events = [(at, line) for at, line in seen if line.startswith(b"data: ")]
    assert events[-1][1].rstrip() == b"data: [DONE]"
    # Each chunk as the provider sent it (0.4 s apart), not all at once at the end.
    times = [at for at, _ in events]
    assert times[0] < 0.3 and times[-1] - times[0] > 1.5, times


def test_compose_recipe_is_the_tested_nginx_recipe_on_pg_and_redis():
    """compose-nginx.conf is deploy/nginx.conf (run above) with the compose service as its
    upstream; compose's Redis keeps nothing, so a restart comes back empty (SCALING.md)."""

    def location(text: str) -> str:
        return text[text.index("    location / {") :]

    tested = (DEPLOY / "nginx.conf").read_text()
    compose_site = (DEPLOY / "compose-nginx.conf").read_text()
    assert location(compose_site) == location(tested)
    assert "server xaiproxy:8080;" in compose_site
    compose = (DEPLOY / "compose.yaml").read_text()
    assert '"--save", ""' in compose and '"--appendonly", "no"' in compose
    assert "XAI_DB: postgresql://" in compose and "XAI_REDIS: redis://redis:6379/0" in compose
