"""Real PostgreSQL and Redis servers for tests: started in temp dirs on free ports, stopped by PID.

PostgreSQL refuses to run as root, so as root it runs as the `postgres` system user (the
Debian package creates it) with its data directory and socket in a temp dir that user
owns. Tuned for tests, not durability: fsync off, no persistence for Redis.
`make test` installs the packages where missing (as root); elsewhere the tests that
need them are skipped with a message saying so.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL_HINT = "apt-get install postgresql redis-server (make test does it as root)"


class Unavailable(RuntimeError):
    """The binaries are missing: tests that need the server skip with this message."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found or not (found[-1] / "initdb").exists():
        raise Unavailable(f"PostgreSQL is not installed: {INSTALL_HINT}")
    return found[-1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen | None, sig: int) -> None:
    """Stop one server by its PID: `sig`, then SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Postgres:
    """A throwaway cluster: superuser `xai`, trust auth on 127.0.0.1 and its own socket dir."""

    user = "xai"

    def __init__(self) -> None:
        self.bin = pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="xai-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._as: dict = {}
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root without a 'postgres' user") from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def url(self, database: str = "postgres", password: str = "") -> str:
        auth = f"{self.user}:{password}" if password else self.user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def start(self) -> Postgres:
        subprocess.run(
            [
                self.bin / "initdb",
                "-D",
                self.data,
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            cwd=self.dir,
            **self._as,
        )
        self.port = free_port()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.bin / "postgres",
                    "-D",
                    self.data,
                    "-p",
                    str(self.port),
                    "-k",
                    self.dir,
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                **self._as,
            )
        _wait_port(self.port, self.proc, "postgres", self.log)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 20.0) -> None:
        """Listening is not accepting queries yet (startup recovery): ask pg_isready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = subprocess.run(
                [self.bin / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ok.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres not ready: {_tail(self.log)}")

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)  # SIGINT = fast shutdown: no waiting for clients
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """redis-server without persistence; `kill()` and `start()` again = restarted empty."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise Unavailable(f"redis-server is not installed: {INSTALL_HINT}")
        self.dir = Path(tempfile.mkdtemp(prefix="xai-redis-"))
        self.log = self.dir / "redis.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, password: str = "") -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                    "--protected-mode",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        _wait_port(self.port, self.proc, "redis-server", self.log)
        return self

    def freeze(self, frozen: bool) -> None:
        """SIGSTOP / SIGCONT: a stalled Redis host. The kernel still accepts connections
        (backlog) but nothing answers until it is thawed."""
        self.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)

    def kill(self) -> None:
        """kill -9: the data is gone (no persistence), the port is free for `start()`."""
        _stop(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)
