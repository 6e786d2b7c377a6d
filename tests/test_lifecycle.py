"""The real `xaiproxy serve` process: first start, SIGTERM drains and exits 0, kill -9 loses nothing committed."""

import asyncio
import os
import signal
import socket
import sqlite3
import sys

import aiohttp
import pytest

from tests.helpers import ROOT_KEY

pytest_plugins = ["tests.fakes_fixtures"]

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start(db, env_extra=None):
    port = free_port()
    env = {**os.environ, "XAI_DB": str(db), "XAI_PORT": str(port), "XAI_ACCESS_LOG": ""}
    env.pop("XAI_ROOT_KEY", None)
    env.update(env_extra or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "xaiproxy",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            try:
                async with s.get(url + "/healthz") as r:
                    if r.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("gateway did not start: " + (await proc.stdout.read()).decode())


async def put_config(url, key, body):
    async with aiohttp.ClientSession() as s:
        async with s.put(
            url + "/x-config", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as r:
            return r.status


async def test_first_start_prints_root_key_once(tmp_path):
    db = tmp_path / "first.db"
    proc, url = await start(db)
    proc.send_signal(signal.SIGTERM)
    out = (await proc.stdout.read()).decode()
    assert await proc.wait() == 0
    keys = [w for w in out.split() if w.startswith("sk-Xvs") and len(w) == 51]
    assert keys, out
    assert str(db) in out and "/v1" in out
    proc, url = await start(db)  # second start: the key works and is not shown again
    assert await put_config(url, keys[0], {"MODEL_MAPPER": "a=b"}) == 200
    proc.send_signal(signal.SIGTERM)
    out2 = (await proc.stdout.read()).decode()
    assert await proc.wait() == 0
    assert keys[0] not in out2


async def test_root_key_from_env_is_never_printed(tmp_path):
    proc, url = await start(tmp_path / "env.db", {"XAI_ROOT_KEY": ROOT_KEY})
    assert await put_config(url, ROOT_KEY, {"MODEL_MAPPER": "a=b"}) == 200
    proc.send_signal(signal.SIGTERM)
    out = (await proc.stdout.read()).decode()
    assert await proc.wait() == 0
    assert ROOT_KEY not in out


async def test_sigterm_exits_zero_with_everything_flushed(tmp_path):
    db = tmp_path / "term.db"
    proc, url = await start(db, {"XAI_ROOT_KEY": ROOT_KEY, "XAI_FLUSH_INTERVAL": "5"})
    assert await put_config(url, ROOT_KEY, {"LEVEL_MAPPER": "gpt-4*=2"}) == 200
    proc.send_signal(signal.SIGTERM)
    await proc.stdout.read()
    assert await proc.wait() == 0
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM op_logs").fetchone()[0] == 1
    con.close()


async def test_kill_9_leaves_an_intact_database(tmp_path):
    db = tmp_path / "kill.db"
    proc, url = await start(db, {"XAI_ROOT_KEY": ROOT_KEY})
    for n in range(20):
        assert await put_config(url, ROOT_KEY, {"MODEL_MAPPER": f"m{n}=x"}) == 200
    proc.kill()
    await proc.wait()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT version FROM config_version").fetchone()[0] == 20
    con.close()
    proc, url = await start(db, {"XAI_ROOT_KEY": ROOT_KEY})
    assert await put_config(url, ROOT_KEY, {"MODEL_MAPPER": "z=y"}) == 200
    proc.send_signal(signal.SIGTERM)
    await proc.stdout.read()
    assert await proc.wait() == 0


async def test_sigterm_lets_an_inflight_stream_finish_and_bills_it(tmp_path, upstream):
    db = tmp_path / "drain.db"
    env = {"XAI_ROOT_KEY": ROOT_KEY, "XAI_ALLOW_PRIVATE_PROVIDERS": "1"}
    proc, url = await start(db, {**env, "XAI_FORWARD_HEADERS": "x-fake-*"})
    auth = {"Authorization": f"Bearer {ROOT_KEY}"}
    async with aiohttp.ClientSession() as s:
        key = {"SecretKey": "sk-upstream-drain-abcdefghijkl", "Level": 1, "Provider": upstream.url}
        async with s.post(url + "/x-keys", json=key, headers=auth) as r:
            assert r.status == 201
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        headers = {**auth, "x-fake-chunks": "6", "x-fake-delay": "0.25"}
        async with s.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            first = await r.content.readline()
            assert first.startswith(b"data: ")
            proc.send_signal(signal.SIGTERM)  # mid-stream
            rest = await r.content.read()
    assert rest.rstrip().endswith(b"data: [DONE]")
    await proc.stdout.read()
    assert await proc.wait() == 0
    con = sqlite3.connect(db)
    (completion,) = con.execute("SELECT completion_tokens FROM usage").fetchone()
    con.close()
    assert completion == 6


async def test_readyz_is_503_while_draining(api):
    assert (await api.get("/readyz", key="")).status == 200
    await api.server.app.on_shutdown.send(api.server.app)
    r = await api.get("/readyz", key="")
    assert r.status == 503 and r.error_code == "draining"
    assert (await api.get("/healthz", key="")).status == 200
