"""/x-news and /dashboard/x-user-news: system and targeted news, scope, expiry, deletion."""

import time
from datetime import UTC, datetime

import pytest

from tests.helpers import start_gateway

NEWS = {"title": "Maintenance Notice", "content": "System maintenance on Sunday."}


def ts(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


async def news_of(api, key):
    r = await api.get("/dashboard/x-user-news", key=key)
    assert r.status == 200, r.body
    assert r.body["success"] is True
    return [n["title"] for n in r.body["system_news"]], [n["title"] for n in r.body["user_news"]]


async def test_system_news_reaches_everyone(api, tree):
    r = await api.post("/x-news", NEWS)
    assert r.status == 201, r.body
    item = r.body["news"]
    assert item["title"] == NEWS["title"] and item["target"] == "system"
    assert ts(item["expires_at"]) - ts(item["created_at"]) == pytest.approx(7 * 86400, abs=1)
    for _, key in tree.values():
        r = await api.get("/dashboard/x-user-news", key=key)
        (shown,) = r.body["system_news"]
        assert set(shown) == {"id", "title", "content", "created_at", "expires_at"}
        assert shown["content"] == NEWS["content"] and r.body["user_news"] == []
    assert await news_of(api, api.root) == (["Maintenance Notice"], [])


async def test_only_root_publishes_or_clears_system_news(api, tree):
    akey = tree["a"][1]
    r = await api.post("/x-news", NEWS, key=akey)
    assert r.status == 403 and r.error_code == "permission_denied"
    r = await api.delete("/x-news", key=akey)
    assert r.status == 403 and r.error_code == "permission_denied"
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM news") == 0


async def test_targeted_news_by_id_name_and_email(api, tree):
    (a, akey), a1key, bkey = tree["a"], tree["a1"][1], tree["b"][1]
    r = await api.post(f"/x-news/{a}", {"title": "for alpha", "content": "hi"})
    assert r.status == 201, r.body
    created, expires = ts(r.body["news"]["created_at"]), ts(r.body["news"]["expires_at"])
    assert expires - created == pytest.approx(32 * 86400, abs=1)
    r = await api.post("/x-news/alpha-dev", {"title": "for dev", "content": "x", "days": 1.5})
    assert r.status == 201
    assert ts(r.body["news"]["expires_at"]) - time.time() == pytest.approx(1.5 * 86400, abs=5)
    r = await api.post("/x-news/beta-team@example.com", {"title": "for beta", "content": "x"})
    assert r.status == 201
    assert await news_of(api, akey) == ([], ["for alpha"])
    assert await news_of(api, a1key) == ([], ["for dev"])  # news for the parent is not the child's
    assert await news_of(api, bkey) == ([], ["for beta"])
    assert await news_of(api, api.root) == ([], [])


async def test_dna_group_news_reaches_the_whole_branch(api, tree):
    (a, akey), (a1, a1key), (_, bkey) = tree["a"], tree["a1"], tree["b"]
    r = await api.post(f"/x-news/.1.{a}.", {"title": "alpha branch", "content": "x"})
    assert r.status == 201 and r.body["news"]["target"] == f"group .1.{a}."
    assert await news_of(api, akey) == ([], ["alpha branch"])
    assert await news_of(api, a1key) == ([], ["alpha branch"])
    assert await news_of(api, bkey) == ([], [])
    # a parent may address its own branch and its children; the reader sees both
    assert (
        await api.post(f"/x-news/.1.{a}.", {"title": "mine", "content": "x"}, key=akey)
    ).status == 201
    assert (
        await api.post(f"/x-news/{a1}", {"title": "to dev", "content": "x"}, key=akey)
    ).status == 201
    _, dev_news = await news_of(api, a1key)
    assert sorted(dev_news) == ["alpha branch", "mine", "to dev"]


async def test_targets_outside_the_subtree_are_404(api, tree):
    (a, akey), (a1, a1key), (b, _) = tree["a"], tree["a1"], tree["b"]
    for target in (str(b), "beta-team", "root", "1", ".1.", f".1.{b}.", "no-such-user", ".1.999."):
        r = await api.post(f"/x-news/{target}", NEWS, key=akey)
        assert r.status == 404 and r.error_code == "not_found", target
        r = await api.delete(f"/x-news/{target}", key=akey)
        assert r.status == 404, target
    # a child cannot address its parent, nor its parent's branch
    assert (await api.post(f"/x-news/{a}", NEWS, key=a1key)).status == 404
    assert (await api.post(f"/x-news/.1.{a}.", NEWS, key=a1key)).status == 404
    # a DNA that is not the account's real DNA is not a group
    assert (await api.post(f"/x-news/.1.{a1}.", NEWS)).status == 404
    assert (await api.post(f"/x-news/.{a}.{a1}.", NEWS)).status == 404
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM news") == 0


async def test_delete_targeted_news_the_caller_wrote(api, tree):
    (a, akey), (a1, a1key) = tree["a"], tree["a1"]
    await api.post(f"/x-news/{a1}", {"title": "from root", "content": "x"})
    await api.post(f"/x-news/{a1}", {"title": "from alpha", "content": "x"}, key=akey)
    await api.post(f"/x-news/.1.{a}.{a1}.", {"title": "alpha group", "content": "x"}, key=akey)
    r = await api.delete(f"/x-news/{a1}", key=akey)
    assert r.status == 200 and r.body == {"success": True, "deleted": 1}
    assert sorted((await news_of(api, a1key))[1]) == ["alpha group", "from root"]
    r = await api.delete(f"/x-news/.1.{a}.{a1}.", key=akey)
    assert r.body["deleted"] == 1
    r = await api.delete("/x-news/alpha-dev", key=akey)
    assert r.status == 200 and r.body["deleted"] == 0
    assert (await news_of(api, a1key))[1] == ["from root"]
    logs = await api.gw.store.fetchall(
        "SELECT action, operator_id, target_id FROM op_logs WHERE action LIKE '%news' ORDER BY id"
    )
    assert [tuple(x) for x in logs] == [
        ("create_news", 1, a1),
        ("create_news", a, a1),
        ("create_news", a, a1),
        ("delete_news", a, a1),
        ("delete_news", a, a1),
    ]


async def test_delete_system_news(api, tree):
    await api.post("/x-news", {"title": "one", "content": "x"})
    await api.post("/x-news", {"title": "two", "content": "x"})
    await api.post(f"/x-news/{tree['a'][0]}", {"title": "targeted", "content": "x"})
    r = await api.delete("/x-news")
    assert r.status == 200 and r.body == {"success": True, "deleted": 2}
    assert await news_of(api, tree["a"][1]) == ([], ["targeted"])
    log = await api.gw.store.fetchone("SELECT * FROM op_logs WHERE action = 'delete_news'")
    assert log["operator_id"] == 1 and log["target_id"] == 0


async def test_expired_news_is_hidden_and_pruned(api, tree):
    past = time.time() - 10
    await api.gw.store.write(
        [
            (
                "INSERT INTO news (id, author_id, target_id, target_dna, title, content,"
                " created_at, expires_at) VALUES (?, 1, NULL, NULL, 'old', 'x', ?, ?)",
                (api.gw.state.next_id("news"), past - 100, past),
            )
        ]
    )
    assert await news_of(api, tree["a"][1]) == ([], [])
    await api.post("/x-news", {"title": "fresh", "content": "x"})
    assert await news_of(api, tree["a"][1]) == (["fresh"], [])
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM news") == 1


async def test_news_ids_survive_restart(aiohttp_server, tmp_path):
    db = tmp_path / "news.db"
    first = await start_gateway(aiohttp_server, db)
    r1 = await first.post("/x-news", NEWS)
    await first.close()
    again = await start_gateway(aiohttp_server, db)
    try:
        r2 = await again.post("/x-news", NEWS)
        assert r2.status == 201 and r2.body["news"]["id"] == r1.body["news"]["id"] + 1
        assert len((await news_of(again, again.root))[0]) == 2
    finally:
        await again.close()


@pytest.mark.parametrize(
    "body",
    [
        {"content": "no title"},
        {"title": "no content"},
        {"title": "", "content": "x"},
        {"title": "x", "content": "x", "days": 0},
        {"title": "x", "content": "x", "days": -1},
        {"title": "x", "content": "x", "days": 99999},
        {"title": "x", "content": "x", "days": "7"},
        {"title": "x", "content": "x", "extra": 1},
        {"title": 5, "content": "x"},
        {"title": "x" * 201, "content": "x"},
        [],
    ],
)
async def test_bad_bodies_are_400(api, tree, body):
    for path in ("/x-news", f"/x-news/{tree['a'][0]}"):
        r = await api.post(path, body)
        assert r.status == 400, (path, body, r.body)
        assert r.body["error"]["type"] == "invalid_request_error"
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM news") == 0


async def test_invalid_json_is_400(api):
    r = await api.post("/x-news", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status == 400 and r.error_code == "invalid_json"


async def test_news_is_bounded(api):
    import asyncio

    from tests.fakes import add_user

    kid, key = await add_user(api, credit=100)
    dna = f".1.{kid}."
    for body in (
        {**NEWS, "content": "é" * 4097},  # 4,097 characters, 8,194 bytes
        {**NEWS, "content": "x" * 8193},
        {**NEWS, "days": 366},
        {**NEWS, "days": 3650},
    ):
        r = await api.post(f"/x-news/{dna}", body, key=key)
        assert r.status == 400 and r.error_code == "invalid_request", r.body
    r = await api.post(f"/x-news/{dna}", {**NEWS, "content": "x" * 8192, "days": 365}, key=key)
    assert r.status == 201, r.body
    # At most 100 live items per author, even when they arrive together.
    answers = await asyncio.gather(
        *(api.post(f"/x-news/{dna}", {**NEWS, "title": f"n{i}"}, key=key) for i in range(104))
    )
    codes = sorted(r.status for r in answers)
    assert codes == [201] * 99 + [403] * 5, codes
    assert {r.error_code for r in answers if r.status == 403} == {"news_limit_reached"}
    live = await api.gw.store.scalar("SELECT COUNT(*) FROM news WHERE author_id = ?", (kid,))
    logged = await api.gw.store.scalar(
        "SELECT COUNT(*) FROM op_logs WHERE operator_id = ? AND action = 'create_news'", (kid,)
    )
    assert live == logged == 100
    # Writing news needs the balance other management changes need (root exempt).
    poor_id, poor = await add_user(api, credit=5)
    r = await api.post(f"/x-news/.1.{poor_id}.", NEWS, key=poor)
    assert r.status == 403 and r.error_code == "insufficient_balance"
    assert (await api.post("/x-news", NEWS)).status == 201
