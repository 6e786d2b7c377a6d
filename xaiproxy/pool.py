"""The data plane's upstream pool: keep-alive connections per (TLS, host, port, guarded).

A new connection resolves the host once, applies the SSRF rule to those addresses
(`ssrf.resolve_checked`) and connects to one of them — never to a name resolved again
later — optionally through an HTTP CONNECT proxy (`upstream_proxy`), then TLS with
certificate verification and SNI for https origins. Idle connections are reused newest
first and dropped after `KEEPALIVE` seconds, before a typical server would close them.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from dataclasses import dataclass

from yarl import URL

from . import ssrf
from .upstream import ConnectFailed, Connection, encode_head

KEEPALIVE = 15.0  # seconds an idle connection is kept
BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


@dataclass(frozen=True, slots=True)
class Origin:
    tls: bool
    host: str  # as resolved; IDN in its ASCII form
    port: int
    host_header: str
    prefix: str  # a path the provider URL carries before /v1…


class Pool:
    def __init__(self, settings, ssl_context: ssl.SSLContext | None = None, resolver=None) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = settings.upstream_connect_timeout
        self.headers_timeout = settings.upstream_headers_timeout
        self.idle_timeout = settings.upstream_idle_timeout
        self.proxy = _proxy(settings.upstream_proxy)
        self._ssl = ssl_context
        self._ca_file = settings.upstream_ca_file
        self._idle: dict[tuple, list[Connection]] = {}
        self._origins: dict[str, Origin] = {}
        self.open: set[Connection] = set()
        self.resolver = resolver  # an aiohttp AbstractResolver (gw.resolver); None = the system's
        self.connects = 0

    # -- one request --------------------------------------------------------
    async def request(
        self, base: str, method: str, target: str, headers, body: bytes, guarded: bool
    ) -> Connection:
        """Send one request and wait for the answer's headers; the caller then reads the
        body and calls `release()` (or `close()`). Raises ssrf.Refused, ConnectFailed,
        UpstreamTimeout or UpstreamError."""
        origin = self.origin(base)
        key = (origin.tls, origin.host, origin.port, guarded)
        conn = self._take(key)
        if conn is None:
            conn = await self._connect(origin, key, guarded)
        length = len(body) if body or method in BODY_METHODS else None
        head = encode_head(method, origin.prefix + target, origin.host_header, headers, length)
        conn.send(head + body if body else head, head_only=method == "HEAD")
        try:
            await conn.answer()
        except BaseException:
            conn.close()
            raise
        return conn

    def origin(self, base: str) -> Origin:
        found = self._origins.get(base)
        if found is None:
            url = URL(base)
            tls = url.scheme == "https"
            host = url.raw_host or ""
            port = url.port or (443 if tls else 80)
            shown = f"[{host}]" if ":" in host else host
            default = port == (443 if tls else 80)
            found = self._origins[base] = Origin(
                tls,
                host,
                port,
                shown if default else f"{shown}:{port}",
                url.raw_path.rstrip("/"),
            )
        return found

    # -- the pool -----------------------------------------------------------
    def _take(self, key: tuple) -> Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            alive = conn.transport is not None and not conn.transport.is_closing()
            if alive and now - conn.idle_since < KEEPALIVE:
                return conn
            conn.close()
        return None

    def put(self, conn: Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: Connection) -> None:
        self.open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def close(self) -> None:
        for conn in list(self.open):
            conn.close()
        self._idle.clear()

    # -- connecting ---------------------------------------------------------
    async def _connect(self, origin: Origin, key: tuple, guarded: bool) -> Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                addresses = await self._resolve(origin, guarded)
                last: BaseException | None = None
                for address in addresses:
                    conn = Connection(self, key)
                    try:
                        await self._open(conn, origin, address)
                    except (OSError, ConnectFailed) as exc:
                        last = exc
                        continue
                    self.open.add(conn)
                    self.connects += 1
                    return conn
        except TimeoutError:
            raise ConnectFailed(f"connecting to {origin.host} timed out") from None
        except ssrf.Refused:
            raise
        except OSError as exc:
            raise ConnectFailed(str(exc)) from None
        raise ConnectFailed(f"cannot connect to {origin.host}: {last}")

    async def _resolve(self, origin: Origin, guarded: bool) -> list[str]:
        """The addresses to connect to: resolved once, private ones dropped when guarded.

        Raises ssrf.Refused for a guarded key (nothing allowed is left, or the name does not
        resolve), ConnectFailed for an unguarded one whose name does not resolve.
        """
        try:
            found = await ssrf.resolve_checked(origin.host, origin.port, not guarded, self.resolver)
        except ssrf.Refused as exc:
            if guarded:
                raise
            raise ConnectFailed(str(exc)) from None
        return list(dict.fromkeys(info["host"] for info in found))

    async def _open(self, conn: Connection, origin: Origin, address: str) -> None:
        tls = self._tls() if origin.tls else None
        if self.proxy is None:
            await self.loop.create_connection(
                lambda: conn,
                address,
                origin.port,
                ssl=tls,
                server_hostname=origin.host if tls else None,
            )
            return
        host, port, auth = self.proxy
        tunnel = _Tunnel(self.loop)
        transport, _ = await self.loop.create_connection(lambda: tunnel, host, port)
        target = f"[{address}]:{origin.port}" if ":" in address else f"{address}:{origin.port}"
        transport.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
        try:
            await tunnel.done
            if tls is not None:
                transport = await self.loop.start_tls(
                    transport, conn, tls, server_hostname=origin.host
                )
            else:
                transport.set_protocol(conn)
        except BaseException:
            transport.abort()
            raise
        conn.connection_made(transport)

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            # Verification and hostname checks on (the default context); an operator's CA
            # bundle for private providers is added, never replacing the system's.
            self._ssl = ssl.create_default_context()
            if self._ca_file:
                self._ssl.load_verify_locations(self._ca_file)
        return self._ssl


class _Tunnel(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT; the connection is handed over on 200."""

    def __init__(self, loop) -> None:
        self.done = loop.create_future()
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if b"\r\n\r\n" not in self._buf or self.done.done():
            return
        line = self._buf.split(b"\r\n", 1)[0].split()
        if len(line) >= 2 and line[1] == b"200":
            self.done.set_result(None)
        else:
            status = line[1].decode("latin-1") if len(line) >= 2 else "?"
            self.done.set_exception(ConnectFailed(f"the upstream proxy refused ({status})"))

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectFailed("the upstream proxy closed the connection"))


def _proxy(setting: str) -> tuple[str, int, str] | None:
    """(host, port, Proxy-Authorization line or '') from `http://[user:pass@]host:port`."""
    if not setting:
        return None
    url = URL(setting)
    if url.scheme != "http" or not url.host:
        raise ValueError(f"upstream_proxy must be http://host:port, not {setting!r}")
    auth = ""
    if url.user is not None:
        token = base64.b64encode(f"{url.user}:{url.password or ''}".encode()).decode()
        auth = f"Proxy-Authorization: Basic {token}\r\n"
    return url.raw_host, url.port or 80, auth
