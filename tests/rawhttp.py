"""A raw-socket HTTP/1.1 upstream: answers written byte by byte, so framing can be broken.

`RawUpstream(script)` runs `await script(req, reader, writer)` for each request on a
connection (keep-alive) until the script returns False or the peer closes. The aiohttp
fake cannot do this: its server frames every answer correctly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass


@dataclass
class RawRequest:
    head: bytes
    body: bytes
    conn: int  # which connection (1, 2, …) it came on
    index: int  # its number on that connection (1, 2, …)

    @property
    def path(self) -> str:
        return self.head.split(b" ", 2)[1].decode()

    def header(self, name: str) -> str | None:
        want = name.lower().encode() + b":"
        for line in self.head.split(b"\r\n")[1:]:
            if line.lower().startswith(want):
                return line.split(b":", 1)[1].strip().decode()
        return None


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request (head, body) with a Content-Length body; None when the peer closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head, body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (linger 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def wait_closed_by_peer(reader: asyncio.StreamReader, limit: float = 10.0) -> None:
    """Hold the connection open until the other side closes it (bounded)."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(limit):
            while await reader.read(65536):
                pass


class RawUpstream:
    def __init__(self, script, host: str = "127.0.0.1", ssl=None) -> None:
        self.script = script
        self.host = host
        self.ssl = ssl
        self.requests: list[RawRequest] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    async def __aenter__(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.ssl)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader, writer) -> None:
        self._tasks.add(asyncio.current_task())
        self.connections += 1
        conn, index = self.connections, 0
        try:
            while (got := await read_request(reader)) is not None:
                index += 1
                req = RawRequest(got[0], got[1], conn, index)
                self.requests.append(req)
                if await self.script(req, reader, writer) is False:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(asyncio.current_task())
            writer.close()
