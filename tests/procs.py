"""A real `xaiproxy serve` process on a free port, and a small HTTP client for it.

`serve(argv, db, tmp)` starts any launcher (the checkout's `python -m xaiproxy`, a
virtualenv's `xaiproxy`, a zipapp) with a clean environment, waits for /healthz and
returns a `Served`; `await served.stop()` sends SIGTERM and expects exit 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.helpers import ROOT_KEY

CHECKOUT = [sys.executable, "-m", "xaiproxy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict:
    """os.environ without XAI_* or PYTHON* variables (nothing of the checkout leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XAI_", "PYTHON"))}
    env.update(extra)
    return env


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def call(self, method: str, path: str, body=None, key: str = ROOT_KEY, **headers):
        """(status, parsed JSON or raw bytes) of one request."""
        hdrs = {"Authorization": f"Bearer {key}", **headers}
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url + path, json=body, headers=hdrs) as r:
                raw = await r.read()
                if r.content_type == "application/json":
                    return r.status, await r.json()
                return r.status, raw

    async def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        assert code == 0, self.output()
        return self.output()


async def serve(argv: list[str], db, tmp: Path, cwd=None, **env: str) -> Served:
    """Start `argv + ["serve"]` on a free port with its database at `db` (env: XAI_* extras)."""
    port = free_port()
    if db is not None:  # None: the default path, relative to cwd
        env["XAI_DB"] = str(db)
    env = clean_env(
        XAI_PORT=str(port),
        XAI_ROOT_KEY=ROOT_KEY,
        XAI_ACCESS_LOG="",
        XAI_ALLOW_PRIVATE_PROVIDERS="1",
        **env,
    )
    log = tmp / f"serve-{port}.log"
    out = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)  # a file: a full pipe would stall it
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, "serve", env=env, cwd=cwd or tmp, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    finally:
        os.close(out)
    served = Served(proc, f"http://127.0.0.1:{port}", log)
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            if proc.returncode is not None:
                break
            try:
                async with s.get(served.url + "/healthz") as r:
                    if r.status == 200:
                        return served
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    raise AssertionError(f"{argv} did not start:\n{served.output()}")


async def run(argv: list[str], cwd=None, env: dict | None = None) -> tuple[int, str, str]:
    """Run a command to its end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=clean_env() if env is None else env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()
