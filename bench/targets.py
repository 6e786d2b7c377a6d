"""The systems under test: how to start, set up, reach and stop each one.

Every target is a subprocess on 127.0.0.1 at a free port, started with its
logs in the run's temp dir and stopped by its PID (and its children's PIDs).
A target that cannot run here raises Skip with a note saying why.
"""

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import procstat

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LITELLM_VENV = BENCH / ".litellm-venv"
XAIPROXY_BIN = ROOT / ".venv" / "bin" / "xaiproxy"
URLSAFE = string.ascii_letters + string.digits + "-_"


class Skip(Exception):
    """This target cannot be measured here; the message says why."""


@dataclass
class Ctx:
    tmp: Path  # the run's temp dir: configs, logs, databases
    mock_url: str = ""
    allow_install: bool = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_key(prefix: str, n: int) -> str:
    return prefix + "".join(secrets.choice(URLSAFE) for _ in range(n))


def run_quiet(cmd: list[str], timeout: float = 30) -> str:
    """stdout+stderr of a short command, or '' if it cannot run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (out.stdout + out.stderr).strip()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def spawn(cmd: list, log: Path, env: dict | None = None) -> subprocess.Popen:
    # a session of its own: a Ctrl-C at the terminal reaches only the runner,
    # whose finally block then stops every target by PID
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip


def stop_process(proc: subprocess.Popen | None, sig=signal.SIGTERM, wait: float = 15) -> None:
    """Stop `proc` by PID, then any of its children still alive, by PID."""
    if proc is None or proc.poll() is not None:
        return
    family = procstat.tree(proc.pid)[1:]
    proc.send_signal(sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def wait_http(url: str, proc: subprocess.Popen, limit: float, headers=None) -> None:
    """Until GET url answers 200; Skip if the process dies or `limit` seconds pass."""
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Skip(f"exited with code {proc.returncode} before answering {url}")
            try:
                async with session.get(url, headers=headers) as resp:
                    if resp.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.25)
    raise Skip(f"{url} did not answer 200 within {limit:.0f} s")


@dataclass
class Target:
    name: str
    url: str = ""
    key: str = "sk-bench"
    proc: subprocess.Popen | None = None
    notes: list = field(default_factory=list)
    version: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def log(self, ctx: Ctx) -> Path:
        return ctx.tmp / f"{self.name}.log"

    async def start(self, ctx: Ctx) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        stop_process(self.proc)

    async def launch(self, ctx: Ctx, cmd: list, ready: str, limit: float, env=None, headers=None):
        """Start `cmd` and wait (up to `limit` s) for GET `ready` (a path) to answer 200."""
        self.proc = spawn(cmd, self.log(ctx), env)
        try:
            await wait_http(self.url + ready, self.proc, limit, headers)
        except Skip as exc:
            self.stop()
            raise Skip(f"{exc}; log tail:\n{tail(self.log(ctx))}") from None


class MockTarget(Target):
    """The mock upstream itself: every other target proxies to it."""

    async def start(self, ctx: Ctx) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, BENCH / "mock_upstream.py", "--port", port]
        await self.launch(ctx, cmd, "/v1/models", 30)
        ctx.mock_url = self.url
        self.version = "bench/mock_upstream.py"

    async def configure(self, **knobs) -> None:
        """Set the mock's knobs for the next scenario (POST /_mock/config)."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url + "/_mock/config", json=knobs) as resp,
        ):
            if resp.status != 200:
                raise RuntimeError(f"mock config {knobs}: {resp.status} {await resp.text()}")


NGINX_CONF = """\
worker_processes {workers};
worker_rlimit_nofile 65535;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
{user}
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    upstream mock {{ server {upstream}; keepalive 512; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def find_nginx() -> str:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), ""
    )


def install_nginx() -> str:
    """One attempt at the distribution's nginx, when we are root."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return ""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for pkg in ("nginx-light", "nginx"):
        print(f"  nginx: not installed; trying apt-get install -y {pkg}", flush=True)
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", pkg]
        try:
            subprocess.run(cmd, env=env, capture_output=True, timeout=240, check=False)
        except subprocess.TimeoutExpired:
            return ""
        if find_nginx():
            return find_nginx()
    return ""


class NginxTarget(Target):
    """nginx as a plain streaming reverse proxy (proxy_buffering off)."""

    workers: int = 1

    async def start(self, ctx: Ctx) -> None:
        binary = find_nginx() or (install_nginx() if ctx.allow_install else "")
        if not binary:
            raise Skip("nginx is not installed (and could not be installed here)")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        conf = ctx.tmp / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""  # workers must reach the temp dir
        upstream = ctx.mock_url.removeprefix("http://")
        conf.write_text(
            NGINX_CONF.format(
                workers=self.workers, tmp=ctx.tmp, user=user, upstream=upstream, port=port
            )
        )
        cmd = [binary, "-p", ctx.tmp, "-c", conf, "-g", "daemon off;"]
        await self.launch(ctx, cmd, "/v1/models", 30)
        self.version = run_quiet([binary, "-v"]).replace("nginx version: ", "")
        self.notes.append(f"{self.workers} worker process, upstream keepalive, proxy_buffering off")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)  # graceful: master stops its workers


LITELLM_CONF = """\
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {mock}/v1
      api_key: sk-mock-upstream
litellm_settings:
  telemetry: false
  drop_params: true
  turn_off_message_logging: true
  callbacks: []
general_settings:
  master_key: {key}
  disable_spend_logs: true
  disable_error_logs: true
"""


def litellm_installed() -> bool:
    return (LITELLM_VENV / "bin" / "litellm").exists()


def install_litellm(timeout: float = 420) -> bool:
    """litellm[proxy] into its own virtualenv, so the project's .venv stays clean."""
    print(
        f"  litellm: installing litellm[proxy] into {LITELLM_VENV} (up to {timeout:.0f} s)",
        flush=True,
    )
    log = BENCH / ".litellm-venv.install.log"
    try:
        if not (LITELLM_VENV / "bin" / "pip").exists():
            subprocess.run([sys.executable, "-m", "venv", LITELLM_VENV], check=True, timeout=120)
        with open(log, "wb") as out:
            pip = [LITELLM_VENV / "bin" / "pip", "install", "-q", "litellm[proxy]"]
            subprocess.run(pip, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"  litellm: install failed ({exc}); see {log}", flush=True)
    return litellm_installed()


class LiteLLMTarget(Target):
    """LiteLLM's proxy: model gpt-4o-mini → openai/ provider at the mock, no database."""

    async def start(self, ctx: Ctx) -> None:
        if not litellm_installed() and not (ctx.allow_install and install_litellm()):
            raise Skip(f"litellm[proxy] is not installed in {LITELLM_VENV}")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.key = random_key("sk-bench-litellm-", 24)
        conf = ctx.tmp / "litellm.yaml"
        conf.write_text(LITELLM_CONF.format(mock=ctx.mock_url, key=self.key))
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        # no fetching of the model price map from the internet, little logging
        env |= {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "NO_DOCS": "True"}
        binary = LITELLM_VENV / "bin" / "litellm"
        cmd = [
            binary,
            "--config",
            conf,
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--num_workers",
            "1",
        ]
        await self.launch(ctx, cmd, "/health/liveliness", 90, env)
        python = LITELLM_VENV / "bin" / "python"
        self.version = run_quiet(
            [python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"]
        )
        self.notes.append("1 worker, master key auth, no database")
