"""The lean upstream client (xaiproxy.pool / xaiproxy.upstream) over real sockets."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes import BOTH_PROTOCOLS, add_user, chat
from tests.rawhttp import RawUpstream, chunk, wait_closed_by_peer
from tests.test_ssrf import Rebinding
from xaiproxy import settings as settings_mod
from xaiproxy import ssrf
from xaiproxy.pool import Pool
from xaiproxy.upstream import ConnectFailed, UpstreamTimeout

OK_BODY = b'{"ok":true}'


def plain(body: bytes = OK_BODY, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
        % (
            len(body),
            extra,
            body,
        )
    )


def chunked(*pieces: bytes) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return head + b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n"


def make_pool(ssl_context=None, resolver=None, **overrides) -> Pool:
    return Pool(settings_mod.load(env={}, **overrides), ssl_context, resolver)


async def fetch(pool: Pool, url: str, guarded: bool = False, body: bytes = b"{}"):
    """One POST; returns (status, body bytes, connection) after the answer is complete."""
    conn = await pool.request(
        url, "POST", "/v1/x", {"Content-Type": "application/json"}, body, guarded
    )
    got: list[bytes] = []
    conn.stream(got.append)
    assert await conn.wait()
    status = conn.status
    conn.release()
    return status, b"".join(got), conn


async def test_keep_alive_reuses_one_connection():
    async def answer(req, reader, writer):
        writer.write(plain(req.body))

    async with RawUpstream(answer) as up:
        pool = make_pool()
        for i in range(5):
            status, body, _ = await fetch(pool, up.url, body=b'{"n":%d}' % i)
            assert (status, body) == (200, b'{"n":%d}' % i)
        assert up.connections == 1 and pool.connects == 1
        assert [r.index for r in up.requests] == [1, 2, 3, 4, 5]
        assert up.requests[0].header("Content-Length") == "7"
        assert up.requests[0].header("Host") == f"127.0.0.1:{up.port}"
        await pool.close()


async def test_a_pooled_connection_keeps_one_timer_handle_across_answers():
    """No timer handle is made per request: the pooled connection's one is re-armed."""

    async def answer(req, reader, writer):
        writer.write(plain())

    async with RawUpstream(answer) as up:
        pool = make_pool(upstream_idle_timeout=5.0)
        _, _, first = await fetch(pool, up.url)
        handle = first._timer
        assert handle is not None and handle.when() <= first.loop.time() + 5.0
        for _ in range(3):
            _, _, conn = await fetch(pool, up.url)
            assert conn is first and conn._timer is handle
        await pool.close()
        assert handle.cancelled()


async def test_peer_closing_an_idle_pooled_connection():
    async def answer(req, reader, writer):
        writer.write(plain(extra=b"Connection: keep-alive\r\n"))
        await writer.drain()
        return req.index < 1  # then close: an idle connection the peer drops

    async with RawUpstream(answer) as up:
        pool = make_pool()
        await fetch(pool, up.url)
        for _ in range(100):
            if not pool.idle_count():
                break
            await asyncio.sleep(0.01)
        assert pool.idle_count() == 0  # noticed the close while idle, dropped it
        status, _, _ = await fetch(pool, up.url)
        assert status == 200 and up.connections == 2
        await pool.close()


async def test_reused_connection_dying_before_any_byte_is_a_connect_failure():
    async def answer(req, reader, writer):
        if req.index == 2:
            return False  # read the request, close without a byte of answer
        writer.write(plain())

    async with RawUpstream(answer) as up:
        pool = make_pool()
        _, _, first = await fetch(pool, up.url)
        with pytest.raises(ConnectFailed):
            await fetch(pool, up.url)
        assert first.reused == 1 and pool.idle_count() == 0
        await pool.close()


async def test_connection_not_reused_after_connection_close_or_eof_framing():
    async def answer(req, reader, writer):
        if req.conn == 1:
            writer.write(plain(extra=b"Connection: close\r\n"))
        else:  # no length, no chunks: the body ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK_BODY)
        return False

    async with RawUpstream(answer) as up:
        pool = make_pool()
        assert (await fetch(pool, up.url))[1] == OK_BODY
        assert (await fetch(pool, up.url))[1] == OK_BODY
        assert (await fetch(pool, up.url))[1] == OK_BODY
        assert up.connections == 3 and pool.idle_count() == 0
        await pool.close()


async def test_chunked_and_content_length_answers():
    pieces = [b"data: a\n\n", b"data: bb\n\n", b"data: [DONE]\n\n"]

    async def answer(req, reader, writer):
        writer.write(chunked(*pieces) if req.index % 2 else plain())

    async with RawUpstream(answer) as up:
        pool = make_pool()
        for _ in range(3):
            assert (await fetch(pool, up.url))[1] == b"".join(pieces)
            assert (await fetch(pool, up.url))[1] == OK_BODY
        assert up.connections == 1
        await pool.close()


async def test_answer_split_at_every_byte_boundary():
    whole = chunked(b"data: one\n\n", b"data: two two\n\n", b"data: [DONE]\n\n")

    async def answer(req, reader, writer):
        k = int(req.body)
        writer.write(whole[:k])
        await writer.drain()
        await asyncio.sleep(0.002)  # a separate read on the other side
        writer.write(whole[k:])

    async with RawUpstream(answer) as up:
        pool = make_pool()
        for k in range(1, len(whole)):
            status, body, _ = await fetch(pool, up.url, body=b"%d" % k)
            assert (status, body) == (200, b"data: one\n\ndata: two two\n\ndata: [DONE]\n\n"), k
        assert up.connections == 1  # every split answer was complete, so reused
        await pool.close()


async def test_one_read_of_many_chunks_is_handed_on_in_one_call():
    """Chunks that arrive in one read reach the relay as one piece: one scan, one write."""
    pieces = [b"data: %d\n\n" % i for i in range(20)]

    async def answer(req, reader, writer):
        whole = chunked(*pieces)
        head, _, body = whole.partition(b"\r\n\r\n")
        writer.write(head + b"\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the relay is streaming by now
        writer.write(body)

    async with RawUpstream(answer) as up:
        pool = make_pool()
        conn = await pool.request(up.url, "POST", "/v1/x", {}, b"{}", False)
        got: list[bytes] = []
        conn.stream(got.append)
        assert await conn.wait()
        conn.release()
        assert got == [b"".join(pieces)]
        await pool.close()


async def test_stall_after_headers_times_out_and_closes():
    closed = asyncio.Event()

    async def answer(req, reader, writer):
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"data: 1\n\n")
        )
        await wait_closed_by_peer(reader)
        closed.set()
        return False

    async with RawUpstream(answer) as up:
        pool = make_pool(upstream_idle_timeout=0.3)
        conn = await pool.request(up.url, "POST", "/v1/x", {}, b"{}", False)
        got: list[bytes] = []
        conn.stream(got.append)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await conn.wait()
        assert 0.25 < time.monotonic() - started < 2 and got == [b"data: 1\n\n"]
        await asyncio.wait_for(closed.wait(), 2)  # the upstream connection was closed at once
        await pool.close()


async def test_no_headers_in_time_is_a_timeout():
    async def answer(req, reader, writer):
        await wait_closed_by_peer(reader)
        return False

    async with RawUpstream(answer) as up:
        pool = make_pool(upstream_headers_timeout=0.3)
        with pytest.raises(UpstreamTimeout):
            await pool.request(up.url, "POST", "/v1/x", {}, b"{}", False)
        await pool.close()


async def test_slow_client_pauses_the_upstream_and_bounds_memory(make_gateway):
    """A client that reads nothing: the upstream is paused instead of the gateway buffering."""
    total = 64 * 1024 * 1024
    event = b"data: " + b"x" * 16378 + b"\n\n"  # 16 KiB
    progress = {"sent": 0}

    async def answer(req, reader, writer):
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        while progress["sent"] < total:
            writer.write(chunk(event * 4))
            progress["sent"] += len(event) * 4
            await writer.drain()
        writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()

    async with RawUpstream(answer) as up:
        api = await make_gateway()
        key = {
            "SecretKey": "sk-upstream-slow-abcdefghijk",
            "Level": 1,
            "Provider": up.url,
            "Config": BOTH_PROTOCOLS,
        }
        assert (await api.post("/x-keys", key)).status == 201
        _, user_key = await add_user(api)
        reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        body = b'{"model":"gpt-4o-mini","stream":true,"messages":[]}'
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (user_key.encode(), len(body), body)
        )
        await writer.drain()
        await asyncio.sleep(1.0)  # the client reads nothing for a second
        stuck_at = progress["sent"]
        assert stuck_at < 12 * 1024 * 1024, stuck_at  # the upstream was paused, not drained
        got = 0
        tail = b""
        while chunk_ := await reader.read(1 << 20):
            got += len(chunk_)
            tail = (tail + chunk_)[-64:]
            if tail.endswith(b"0\r\n\r\n"):
                break
        assert got > total and b"data: [DONE]" in tail
        writer.close()


# -- TLS with a throwaway CA ------------------------------------------------------
def _cert(subject: str, issuer_key, issuer_name, key, ca: bool, san=None):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A CA and a server certificate for `localhost` only (not for 127.0.0.1)."""
    path = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xaiproxy test CA")])
    ca = _cert("xaiproxy test CA", ca_key, ca_name, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert("localhost", ca_key, ca_name, key, False, [x509.DNSName("localhost")])
    pem = serialization.Encoding.PEM
    (path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (path / "server.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (path / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def server_tls(path, seen_sni: list) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(path / "server.pem", path / "server.key")
    ctx.sni_callback = lambda sock, name, _ctx: seen_sni.append(name)
    return ctx


async def _ok(req, reader, writer):
    writer.write(plain())


async def test_tls_verified_with_sni_and_a_wrong_name_refused(tls_files):
    sni: list = []
    async with RawUpstream(_ok, ssl=server_tls(tls_files, sni)) as up:
        pool = make_pool(upstream_ca_file=str(tls_files / "ca.pem"))
        status, body, _ = await fetch(pool, f"https://localhost:{up.port}")
        assert (status, body) == (200, OK_BODY) and sni == ["localhost"]
        with pytest.raises(ConnectFailed, match="(?i)certificate|hostname|match"):
            await fetch(pool, f"https://127.0.0.1:{up.port}")  # the cert does not name it
        await pool.close()
        untrusting = make_pool()  # the system's CAs only: our throwaway CA is not among them
        with pytest.raises(ConnectFailed, match="(?i)certificate"):
            await fetch(untrusting, f"https://localhost:{up.port}")
        await untrusting.close()


# -- an HTTP CONNECT proxy written here ----------------------------------------------
class ConnectProxy:
    def __init__(self) -> None:
        self.targets: list[str] = []
        self.auth: list[str] = []
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://user:pw@127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader, writer) -> None:
        self.tasks.add(asyncio.current_task())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
            self.auth += [
                line.split(":", 1)[1].strip()
                for line in head.decode().split("\r\n")
                if line.lower().startswith("proxy-authorization:")
            ]
            self.targets.append(target)
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(src, dst):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.tasks.discard(asyncio.current_task())
            writer.close()


async def test_upstream_proxy_connects_to_the_checked_address(tls_files):
    sni: list = []
    async with (
        ConnectProxy() as proxy,
        RawUpstream(_ok) as plain_up,
        RawUpstream(_ok, ssl=server_tls(tls_files, sni)) as tls_up,
    ):
        pool = make_pool(upstream_proxy=proxy.url, upstream_ca_file=str(tls_files / "ca.pem"))
        assert (await fetch(pool, plain_up.url))[1] == OK_BODY
        assert (await fetch(pool, f"https://localhost:{tls_up.port}"))[1] == OK_BODY
        # The proxy is asked for the address the gateway resolved and checked, not a name.
        assert proxy.targets == [f"127.0.0.1:{plain_up.port}", f"127.0.0.1:{tls_up.port}"]
        assert proxy.auth == ["Basic dXNlcjpwdw=="] * 2 and sni == ["localhost"]
        assert (await fetch(pool, plain_up.url))[1] == OK_BODY  # tunnels are pooled too
        assert len(proxy.targets) == 2
        await pool.close()


async def test_guarded_request_to_a_private_address_is_refused():
    async with RawUpstream(_ok) as up:
        pool = make_pool()
        with pytest.raises(ssrf.Refused):
            await pool.request(up.url, "POST", "/v1/x", {}, b"{}", True)
        with pytest.raises(ssrf.Refused):
            await pool.request(f"http://localhost:{up.port}", "POST", "/v1/x", {}, b"{}", True)
        assert up.connections == 0
        await pool.close()


async def test_dns_rebinding_cannot_swap_the_address_after_the_check():
    """A DNS that answers a public address first and a private one after: the pool resolves
    once, checks, and connects to what it checked, so the private address is never reached."""
    dns = Rebinding("1.1.1.1", "127.0.0.1")  # public, then private

    async with RawUpstream(_ok) as up:
        pool = make_pool(upstream_connect_timeout=0.5, resolver=dns)
        with pytest.raises(ConnectFailed):  # 1.1.1.1 is not reachable from the test machine
            await pool.request(f"http://rebind.test:{up.port}", "POST", "/v1/x", {}, b"", True)
        assert dns.asked == ["rebind.test"] and up.connections == 0
        with pytest.raises(ssrf.Refused):  # the second answer is checked, and refused
            await pool.request(f"http://rebind.test:{up.port}", "POST", "/v1/x", {}, b"", True)
        assert up.connections == 0
        # An unguarded key connects to the address the resolver gave, on its own connection.
        status, body, _ = await fetch(pool, f"http://rebind.test:{up.port}", guarded=False)
        assert (status, body, up.connections) == (200, OK_BODY, 1)
        await pool.close()


async def test_gateway_client_disconnect_closes_the_upstream(make_gateway):
    closed = asyncio.Event()

    async def answer(req, reader, writer):
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        while not writer.is_closing():
            writer.write(chunk(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'))
            await writer.drain()
            await asyncio.sleep(0.01)
        closed.set()
        return False

    async def watch(req, reader, writer):
        try:
            await answer(req, reader, writer)
        except ConnectionError:
            closed.set()
            return False

    async with RawUpstream(watch) as up:
        api = await make_gateway()
        key = {
            "SecretKey": "sk-upstream-gone-abcdefghijk",
            "Level": 1,
            "Provider": up.url,
            "Config": BOTH_PROTOCOLS,
        }
        assert (await api.post("/x-keys", key)).status == 201
        resp = await api.session.post(
            api.url + "/v1/chat/completions",
            json=chat(stream=True),
            headers={"Authorization": f"Bearer {api.root}"},
        )
        await resp.content.readany()
        resp.close()
        await asyncio.wait_for(closed.wait(), 3)
        assert api.gw.upstream.idle_count() == 0


async def test_gateway_sends_headers_with_the_first_bytes_and_the_end_with_the_last(make_gateway):
    """Headers wait for the first bytes; an answer that arrives in one read goes out in one
    write: headers, events and the chunked terminator read back in one recv."""
    events = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n' * 3 + b"data: [DONE]\n\n"

    async def answer(req, reader, writer):
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(
            b"".join(chunk(e + b"\n\n") for e in events.split(b"\n\n")[:-1]) + b"0\r\n\r\n"
        )

    async with RawUpstream(answer) as up:
        api = await make_gateway()
        key = {"SecretKey": "sk-upstream-one-abcdefghijk", "Level": 1, "Provider": up.url}
        assert (await api.post("/x-keys", key | {"Config": BOTH_PROTOCOLS})).status == 201
        _, user_key = await add_user(api)
        reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
        body = b'{"model":"gpt-4o-mini","stream":true,"messages":[]}'
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (user_key.encode(), len(body), body)
        )
        await writer.drain()
        first = await asyncio.wait_for(reader.read(65536), 5)
        assert first.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in first, first
        assert first.endswith(b"\r\n0\r\n\r\n"), first
        writer.close()
