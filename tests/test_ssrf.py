"""The SSRF rule: one definition of a private provider address, for add time and connect time."""

import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver

from tests.fakes import add_key, chat
from tests.helpers import ROOT_KEY, Api
from xaiproxy import settings as settings_mod
from xaiproxy import ssrf
from xaiproxy.app import GATEWAY, create_app

pytest_plugins = ["tests.fakes_fixtures"]


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1%eth0",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "nonsense",
    ],
)
def test_non_global_addresses_are_private(address):
    assert ssrf.is_private(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_global_addresses_are_not(address):
    assert not ssrf.is_private(address)


def test_rule_applies_to_non_root_owners_unless_the_operator_allows():
    strict, open_ = settings_mod.Settings(), settings_mod.Settings(allow_private_providers=True)
    assert ssrf.restricted(False, strict)
    assert not ssrf.restricted(True, strict)
    assert not ssrf.restricted(False, open_)


async def test_resolution():
    assert await ssrf.resolves_private("localhost") is True
    assert await ssrf.resolves_private("127.0.0.1") is True
    assert await ssrf.resolves_private("no-such-host.invalid") is None


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "::127.0.0.1",  # IPv4-compatible
        "::a9fe:a9fe",
        "::ffff:0:127.0.0.1",  # SIIT
        "::ffff:0:a00:1",
        "fec0::1",  # site-local
        "fed0::1234",
    ],
)
def test_wrapped_ipv4_and_site_local_forms_are_private(address):
    assert ssrf.is_private(address)


@pytest.mark.parametrize(
    "address", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:0:808:808", "2001:4860::8888"]
)
def test_wrapped_public_addresses_are_not(address):
    assert not ssrf.is_private(address)


class Rebinding(AbstractResolver):
    """A DNS server under a tenant's control: each lookup gets the next answer (the last repeats)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.asked.append(host)
        if not host.endswith(".test"):
            raise OSError(f"{host} does not resolve")
        ip = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [{"hostname": host, "host": ip, "port": port, "family": fam, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


async def test_resolve_checked_resolves_once_and_keeps_only_allowed_addresses():
    dns = Rebinding("8.8.8.8", "127.0.0.1")
    first = await ssrf.resolve_checked("api.test", 443, False, dns)
    assert [a["host"] for a in first] == ["8.8.8.8"] and dns.asked == ["api.test"]
    with pytest.raises(ssrf.Refused):
        await ssrf.resolve_checked("api.test", 443, False, dns)
    assert [a["host"] for a in await ssrf.resolve_checked("api.test", 443, True, dns)] == [
        "127.0.0.1"
    ]
    with pytest.raises(ssrf.Refused):  # does not resolve: refused, never let through
        await ssrf.resolve_checked("nowhere.invalid", 443, False, dns)
    with pytest.raises(ssrf.Refused):
        await ssrf.resolve_checked("64:ff9b::7f00:1", 443, False, dns)


@pytest.fixture
async def rebinding_gateway(aiohttp_server, tmp_path):
    """A strict gateway (no private providers) whose DNS answers public, then 127.0.0.1."""
    settings = settings_mod.load(
        env={}, db=str(tmp_path / "gw.db"), root_key=ROOT_KEY, access_log="", flush_interval=0.02
    )
    ended = []  # every request's context, from an on_request_end hook
    app = create_app(settings, setup=[lambda gw: gw.hooks.on_request_end.append(ended.append)])
    dns = app[GATEWAY].resolver = Rebinding("8.8.8.8", "127.0.0.1")
    server = await aiohttp_server(app, host="127.0.0.1")
    api = Api(server, f"http://127.0.0.1:{server.port}", ROOT_KEY, aiohttp.ClientSession())
    yield api, dns, ended
    await api.close()


async def test_dns_rebinding_cannot_reach_loopback(rebinding_gateway, upstream):
    api, dns, ended = rebinding_gateway
    r = await api.post(
        "/x-users", {"Name": "tenant", "Email": "t@example.com", "CreditGranted": 50}
    )
    tenant = r.body["User"]["SecretKey"]
    assert (await api.put("/x-users/tenant", {"Owner": True})).status == 200
    provider = f"http://rebind.test:{upstream.server.port}"
    # Added while the name answers a public address…
    await add_key(api, upstream, key=tenant, Provider=provider)
    assert dns.asked == ["rebind.test"]
    # …then it answers 127.0.0.1: the connect resolves once more, checks, and refuses.
    r = await api.post("/v1/chat/completions", chat(), key=tenant)
    assert (r.status, r.error_code) == (502, "upstream_unavailable")
    assert ended[-1].attempt_log[0][2] == "refused"
    assert dns.asked == ["rebind.test"] * 2  # one lookup per connect, no second opinion
    assert upstream.seen == []
    # Root's key to the same name connects to the address the resolver gave (127.0.0.1),
    # over its own pool: the tenant's key still does not reach it afterwards.
    await add_key(api, upstream, Provider=provider)
    assert (await api.post("/v1/chat/completions", chat())).status == 200
    r = await api.post("/v1/chat/completions", chat(), key=tenant)
    assert r.status == 502 and len(upstream.seen) == 1
