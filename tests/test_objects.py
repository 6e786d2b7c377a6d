"""Stateful provider endpoints: refused by default; once enabled, objects belong to their maker."""

from __future__ import annotations

import aiohttp

from tests.fakes import add_user, chat, ready, set_config
from tests.helpers import start_gateway
from xaiproxy import objects

pytest_plugins = ["tests.fakes_fixtures"]

ENABLED = "/v1/chat/completions /v1/responses* /v1/files* /v1/batches*"


async def upload(api, key: str, text: str = "line\n") -> str:
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", text.encode(), filename="in.jsonl")
    headers = {"Authorization": f"Bearer {key}"}
    async with api.session.post(api.url + "/v1/files", data=form, headers=headers) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body["id"]


def test_which_paths_are_stateful():
    assert objects.parse("GET", "/v1/files") == ("files", "")
    assert objects.parse("GET", "/v1//files/file-1/content") == ("files", "file-1")
    assert objects.parse("POST", "/v1/messages/batches") == ("messages/batches", "")
    assert objects.parse("GET", "/v1/organization/users/u1") == ("organization/users", "u1")
    assert objects.parse("GET", "/v1/responses/resp_1") == ("responses", "resp_1")
    assert objects.parse("POST", "/v1/responses/resp_1/cancel") == ("responses", "resp_1")
    for method, path in (
        ("POST", "/v1/responses"),
        ("POST", "/v1/responses/input_tokens"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/messages"),
        ("GET", "/v1/models"),
    ):
        assert objects.parse(method, path) is None, path


async def test_stateful_endpoints_are_refused_by_default(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api)
    for method, path in (
        ("GET", "/v1/files"),
        ("GET", "/v1//files"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches/batch_1"),
        ("GET", "/v1/responses/resp_1"),
        ("DELETE", "/v1/responses/resp_1"),
        ("POST", "/v1/messages/batches"),
        ("GET", "/v1/organization/users"),
        ("GET", "/v1/vector_stores"),
    ):
        for caller in (key, api.root):
            r = await api.request(method, path, caller, json={})
            assert r.status == 403 and r.error_code == "resource_not_allowed", (path, r.body)
    assert upstream.seen == []
    r = await api.post("/v1/responses", {"model": "gpt-4.1", "input": "x"}, key=key)
    assert r.status == 200  # an ordinary model call stays open


async def test_objects_belong_to_their_maker_and_its_ancestors(
    make_gateway, upstream, aiohttp_server
):
    api = await ready(make_gateway, upstream)
    await set_config(api, RESOURCES=ENABLED)
    parent_id, parent = await add_user(api, credit=200)
    _, alice = await add_user(api, key=parent)
    _, bob = await add_user(api)
    file_a = await upload(api, alice)
    file_b = await upload(api, bob, "bob's\n")

    # Only the maker and its ancestors reach an object; everyone else gets 404.
    for path in (f"/v1/files/{file_a}", f"/v1/files/{file_a}/content"):
        for caller in (alice, parent, api.root):
            assert (await api.get(path, caller)).status == 200, path
        r = await api.get(path, bob)
        assert r.status == 404 and r.error_code == "not_found"
    assert (await api.delete(f"/v1/files/{file_a}", key=bob)).status == 404
    assert (await api.get("/v1/files/file-999", alice)).status == 404  # unknown: nobody's

    # Lists show the caller's subtree only.
    async def listed(caller):
        r = await api.get("/v1/files", caller)
        assert r.status == 200
        return {o["id"] for o in r.body["data"]}

    assert await listed(alice) == await listed(parent) == {file_a}
    assert await listed(bob) == {file_b}
    assert await listed(api.root) == {file_a, file_b}

    # A batch is alice's; the output file its answer names is hers too.
    r = await api.post("/v1/batches", {"input_file_id": file_a, "endpoint": "/v1/chat"}, alice)
    batch, out = r.body["id"], r.body["output_file_id"]
    assert (await api.get(f"/v1/batches/{batch}", bob)).status == 404
    assert (await api.get(f"/v1/files/{out}/content", alice)).raw == b"results"
    assert (await api.get(f"/v1/files/{out}/content", bob)).status == 404

    # Ownership is in the store: a restarted gateway keeps it.
    await api.gw.store.flush()
    db = api.gw.settings.db
    await api.close()
    again = await start_gateway(aiohttp_server, db)
    try:
        assert (await again.get(f"/v1/files/{file_a}/content", alice)).status == 200
        assert (await again.get(f"/v1/files/{file_a}/content", bob)).status == 404
        assert (await again.get(f"/v1/batches/{batch}", parent)).status == 200
    finally:
        await again.close()


async def test_a_stored_response_is_its_makers(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    await set_config(api, RESOURCES=ENABLED)
    _, alice = await add_user(api)
    _, bob = await add_user(api)
    r = await api.post("/v1/responses", {"model": "gpt-4.1", "input": "x"}, key=alice)
    assert r.status == 200 and r.body["id"] == "resp_1"
    r = await api.get("/v1/responses/resp_1", bob)
    assert r.status == 404 and upstream.last.path == "/v1/responses"
    r = await api.get("/v1/responses/resp_1", alice)
    assert r.status == 200 and r.body["id"] == "resp_1"
    assert (await api.post("/v1/chat/completions", chat(), key=bob)).status == 200


async def test_object_ids_named_in_a_body_must_be_the_callers(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    await set_config(api, RESOURCES=ENABLED)
    _, parent = await add_user(api, credit=200)
    _, alice = await add_user(api, credit=20, key=parent)
    _, bob = await add_user(api, credit=20, key=parent)  # alice's sibling
    file_a = await upload(api, alice)
    batch = {"input_file_id": file_a, "endpoint": "/v1/chat/completions"}
    file_part = {"type": "file", "file": {"file_id": file_a}}
    leaked = [
        ("/v1/batches", batch),
        ("/v1/chat/completions", chat(messages=[{"role": "user", "content": [file_part]}])),
        ("/v1/responses", {"model": "gpt-4.1", "input": "x", "previous_response_id": "resp_9"}),
        ("/v1/batches", {**batch, "input_file_id": "file-never-made"}),
    ]
    before = len(upstream.seen)
    for path, body in leaked:
        r = await api.post(path, body, key=bob)
        assert (r.status, r.error_code) == (404, "not_found"), (path, r.body)
        assert set(r.body["error"]) >= {"message", "type", "code"}
    assert len(upstream.seen) == before  # nothing went upstream
    # The maker and its ancestors may name it; free-form metadata is not an object.
    for caller in (alice, parent):
        r = await api.post("/v1/batches", {**batch, "metadata": {"file_id": "x"}}, key=caller)
        assert r.status == 200, r.body
    r = await api.post(
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": [file_part]}]),
        key=alice,
    )
    assert r.status == 200
