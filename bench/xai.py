"""xaiproxy as a bench target, set up the way a real deployment is.

The gateway is started with a root key we choose, gets one provider key that
points at the mock and one funded user; the load then runs with that user's
key, so auth, limits, reservation and billing are all on. If a management
call fails (the gateway may be unfinished), the load falls back to the root
key and a note says so.
"""

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from targets import XAIPROXY_BIN, Ctx, Skip, Target, free_port, random_key, run_quiet

MODEL = "gpt-4o-mini"


async def call(session, method: str, url: str, body=None) -> tuple[int, object]:
    """One management call: (status, parsed JSON or text); status 0 if unreachable."""
    try:
        async with session.request(method, url, json=body) as resp:
            raw = await resp.read()
            try:
                return resp.status, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return resp.status, raw[:300].decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, repr(exc)


def xaiproxy_version() -> str:
    try:
        return importlib.metadata.version("xaiproxy")
    except importlib.metadata.PackageNotFoundError:
        python = XAIPROXY_BIN.parent / "python"
        out = run_quiet(
            [python, "-c", "import importlib.metadata as m; print(m.version('xaiproxy'))"]
        )
        return out.splitlines()[-1] if out and "Error" not in out else "unknown"


@dataclass
class XaiproxyTarget(Target):
    db: Path | None = None  # default: a fresh database in the run's temp dir
    root_key: str = ""
    setup: bool = True  # add the mock's provider key and a funded user
    user_id: object = None

    async def start(self, ctx: Ctx) -> None:
        if not os.access(XAIPROXY_BIN, os.X_OK):
            raise Skip(f"{XAIPROXY_BIN} does not exist yet (run `make run` or pip install -e .)")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.root_key = self.root_key or random_key("sk-Xvs", 45)
        self.db = self.db or ctx.tmp / "x.db"
        env = {
            **os.environ,
            "XAI_ROOT_KEY": self.root_key,
            "XAI_ALLOW_PRIVATE_PROVIDERS": "1",
            "XAI_ACCOUNT_MAX_INFLIGHT": "100000",  # one user holds all 500 connections
        }
        cmd = [XAIPROXY_BIN, "serve", "--host", "127.0.0.1", "--port", port, "--db", self.db]
        await self.launch(ctx, cmd, "/healthz", 120, env)
        self.version = xaiproxy_version()
        self.key = self.root_key
        if self.setup:
            await self.configure(ctx)

    def session(self, key: str = "") -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {key or self.root_key}"}
        return aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=120))

    async def configure(self, ctx: Ctx) -> None:
        async with self.session() as s:
            key = {
                "SecretKey": random_key("sk-mock-", 32),
                "Name": "mock",
                "Level": 1,
                "Provider": ctx.mock_url,
                # the mock answers both protocols: /v1/messages goes to it untranslated
                "Config": {"protocols": ["openai", "anthropic"]},
            }
            status, body = await call(s, "POST", self.url + "/x-keys", key)
            if status not in (200, 201):
                self.notes.append(f"POST /x-keys answered {status}: {str(body)[:160]}")
            user = await self.add_user(s, "bench-user", 1_000_000)
        if user:
            self.key, self.user_id = user
            self.notes.append("load runs as a funded user (auth, limits, reservation, billing on)")
        else:
            self.notes.append("management setup failed: load runs with the root key")
        await self.smoke()

    async def add_user(self, session, name: str, credit: float) -> tuple | None:
        """POST /x-users; (secret key, ID) of the new account, or None."""
        user = {"Name": name, "Email": f"{name}@example.com", "CreditGranted": credit}
        user |= {"RPM": 10_000_000, "TPM": 1_000_000_000}
        status, body = await call(session, "POST", self.url + "/x-users", user)
        created = body.get("User") if isinstance(body, dict) else None
        if status in (200, 201) and isinstance(created, dict) and created.get("SecretKey"):
            return created["SecretKey"], created.get("ID")
        self.notes.append(f"POST /x-users ({name}) answered {status}: {str(body)[:160]}")
        return None

    async def smoke(self) -> None:
        """One plain and one streamed request, so a broken setup shows before the load."""
        async with self.session(self.key) as s:
            for stream in (False, True):
                body = {
                    "model": MODEL,
                    "stream": stream,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                status, text = await self.fetch(s, body)
                ended = not stream or text.rstrip().endswith("data: [DONE]")
                if status != 200 or not ended:
                    kind = "stream" if stream else "plain"
                    self.notes.append(f"smoke {kind} request: {status} {text[:160]!r}")

    async def fetch(self, session, body: dict) -> tuple[int, str]:
        try:
            async with session.post(self.url + "/v1/chat/completions", json=body) as resp:
                return resp.status, await resp.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, repr(exc)
