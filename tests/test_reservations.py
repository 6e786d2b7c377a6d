"""What a request reserves, and what counts against HardLimit (SPEC 3, 4).

The estimate covers every answer asked for (`n`, `best_of`); HardLimit counts the month's
spend plus what requests in flight hold plus this estimate, for the account and every
ancestor (each ancestor's HardLimit covers its whole subtree).
"""

import asyncio

import orjson
import pytest

from tests.fakes import add_key, add_user, chat, ready
from tests.helpers import start_gateway
from tests.plugins.test_users import new_user
from xaiproxy import ledger

pytest_plugins = ["tests.fakes_fixtures"]
CHAT = "/v1/chat/completions"


def billed(completion_tokens: int, delay: float = 0.0) -> dict:
    """Fake upstream headers: bill this many completion tokens (gpt-4o-mini: $0.6 per M)."""
    headers = {"x-fake-usage": orjson.dumps({"completion_tokens": completion_tokens}).decode()}
    if delay:
        headers["x-fake-delay"] = str(delay)
    return headers


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, chat(n=10, max_tokens=2_000_000)),
        (
            "/v1/completions",
            {"model": "gpt-4o-mini", "prompt": "hi", "best_of": 10, "max_tokens": 2_000_000},
        ),
        (
            "/v1/completions",
            {
                "model": "gpt-4o-mini",
                "prompt": "hi",
                "n": 3,
                "best_of": 10,
                "max_tokens": 2_000_000,
            },
        ),
    ],
)
async def test_n_and_best_of_are_reserved(make_gateway, upstream, path, body):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, credit=3)
    # One answer of 2M tokens ($1.2) would fit a balance of 3 over the floor of 1; ten do not.
    r = await api.post(path, body, key=key, headers=billed(20_000_000))
    assert (r.status, r.error_code) == (403, "insufficient_balance")
    assert upstream.seen == [] and api.gw.state.accounts[uid].reserved_n == 0
    one = {**body, "n": 1, "best_of": 1}
    assert (await api.post(path, one, key=key)).status == 200


async def test_n_multiplies_the_reservation(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, credit=50)
    acc = api.gw.state.accounts[uid]
    held = []
    for n in (1, 4):
        body = chat(stream=True, n=n, max_tokens=100_000)
        task = asyncio.create_task(api.post(CHAT, body, key=key, headers=billed(5, 0.1)))
        for _ in range(300):
            if acc.reserved_n:
                break
            await asyncio.sleep(0.01)
        held.append(acc.reserved_n)
        assert (await task).status == 200
    # Three more answers of 100k tokens at $0.6 per M: $0.18 more held.
    assert held[1] - held[0] == pytest.approx(0.18 * ledger.NANO, rel=1e-6)


async def test_concurrent_burst_cannot_overshoot_hard_limit(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, credit=100, HardLimit=1.0)
    # Each request reserves and bills about $0.18; all 20 start before any settles.
    body = chat(stream=True, max_tokens=300_000)
    replies = await asyncio.gather(
        *(api.post(CHAT, body, key=key, headers=billed(300_000, 0.05)) for _ in range(20))
    )
    ok = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status != 200]
    assert 1 <= len(ok) <= 5
    assert {(r.status, r.error_code) for r in refused} == {(403, "hard_limit_reached")}
    spend = (await api.get(f"/x-users/{uid}")).body["MonthSpend"]
    assert 0 < spend <= 1.0


async def test_an_ancestors_hard_limit_covers_its_subtree(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, pkey = await new_user(api, "payer-hl", 100, HardLimit=1.0)
    _, k1 = await new_user(api, "kid-hl-1", 20, key=pkey)
    _, k2 = await new_user(api, "kid-hl-2", 20, key=pkey)
    r = await api.post(CHAT, chat(max_tokens=100), key=k1, headers=billed(1_400_000))
    assert r.status == 200  # kid 1 spent $0.84 of the payer's $1
    r = await api.post(CHAT, chat(max_tokens=300_000), key=k2)  # would hold $0.18 more
    assert (r.status, r.error_code) == (403, "hard_limit_reached")
    assert "above this one" in r.body["error"]["message"]
    assert (await api.post(CHAT, chat(max_tokens=100), key=k2)).status == 200


async def test_subtree_spend_survives_a_restart(make_gateway, upstream, aiohttp_server, tmp_path):
    path = tmp_path / "hl.db"
    api = await start_gateway(aiohttp_server, path)
    try:
        await add_key(api, upstream)
        pid, pkey = await new_user(api, "payer-hl-r", 100, HardLimit=1.0)
        _, k1 = await new_user(api, "kid-hl-r", 20, key=pkey)
        assert (
            await api.post(CHAT, chat(max_tokens=100), key=k1, headers=billed(1_400_000))
        ).status == 200
    finally:
        await api.close()
    again = await start_gateway(aiohttp_server, path)
    try:
        payer = again.gw.state.accounts[pid]
        assert ledger.from_n(payer.tree_spend_n) == pytest.approx(0.84, abs=0.01)
        r = await again.post(CHAT, chat(max_tokens=300_000), key=k1)
        assert (r.status, r.error_code) == (403, "hard_limit_reached")
    finally:
        await again.close()


async def test_month_spend_after_a_rates_change_survives_a_restart(
    make_gateway, upstream, aiohttp_server, tmp_path
):
    """Month spend is kept in base units: after a Rates change, memory and a restart agree."""
    path = tmp_path / "rates.db"
    api = await start_gateway(aiohttp_server, path)
    try:
        await add_key(api, upstream)
        uid, key = await new_user(api, "rates-spender", 100, Rates=1.0)
        for _ in range(3):
            r = await api.post(CHAT, chat(max_tokens=100), key=key, headers=billed(1_000_007))
            assert r.status == 200
        assert (await api.put(f"/x-users/{uid}", {"Rates": 7.3})).status == 200
        before = (await api.get(f"/x-users/{uid}")).body["MonthSpend"]
    finally:
        await api.close()
    again = await start_gateway(aiohttp_server, path)
    try:
        after = (await again.get(f"/x-users/{uid}")).body["MonthSpend"]
    finally:
        await again.close()
    assert before == pytest.approx(3 * 1_000_007 * 0.6e-6 * 7.3, rel=1e-3)
    assert after == before


def image_form(path: str, n: bytes | None) -> bytes:
    fields = [("model", b"dall-e-2"), ("image", b"\x89PNG fake")]
    if path.endswith("edits"):
        fields.append(("prompt", b"a red hat"))
    if n is not None:
        fields.append(("n", n))
    out = b""
    for name, value in fields:
        out += b'--b7\r\nContent-Disposition: form-data; name="' + name.encode() + b'"'
        out += b'; filename="a.png"\r\nContent-Type: image/png' if name == "image" else b""
        out += b"\r\n\r\n" + value + b"\r\n"
    return out + b"--b7--\r\n"


@pytest.mark.parametrize("path", ["/v1/images/edits", "/v1/images/variations"])
async def test_a_forms_n_multiplies_the_reservation(make_gateway, upstream, path):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, credit=2)  # 1 over the floor of 1
    headers = {"Content-Type": "multipart/form-data; boundary=b7"}
    # One image is estimated at ~$0.066 (1,000 prompt + 4,096 completion tokens at the
    # "*" price); twenty at ~$1.33, more than the 1 this account may reserve.
    for n in (b"20", b" 20 ", b"020"):
        r = await api.post(path, data=image_form(path, n), key=key, headers=headers)
        assert (r.status, r.error_code) == (403, "insufficient_balance"), n
    assert upstream.seen == [] and api.gw.state.accounts[uid].reserved_n == 0
    for n in (None, b"1", b"10"):
        r = await api.post(path, data=image_form(path, n), key=key, headers=headers)
        assert r.status == 200, (n, r.body)
    assert [s.path for s in upstream.seen] == [path] * 3
