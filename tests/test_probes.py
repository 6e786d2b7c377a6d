"""A client's request never sleeps a shared key by itself: 401/403 leads to a probe."""

from __future__ import annotations

import asyncio
import time

from tests.fakes import add_key, anthropic_body, chat, ready

pytest_plugins = ["tests.fakes_fixtures"]

CHAT = "/v1/chat/completions"


async def until(predicate, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_a_client_org_header_never_reaches_upstream_nor_sleeps_the_key(
    make_gateway, upstream
):
    api = await ready(make_gateway, upstream)
    headers = {"OpenAI-Organization": "org-not-ours", "OpenAI-Project": "proj_x"}
    for _ in range(3):
        r = await api.post(CHAT, chat(), headers=headers)
        assert r.status == 200, r.body
    seen = {k.lower() for k in upstream.last.headers}
    assert "openai-organization" not in seen and "openai-project" not in seen
    (key,) = api.gw.state.keys.values()
    assert key.awake(time.time()) and key.sleep_reason == ""


async def test_the_org_header_comes_from_the_keys_config(make_gateway, upstream):
    api = await make_gateway()
    upstream.organization = "org-ours"
    await add_key(api, upstream, Config={"headers": {"OpenAI-Organization": "org-ours"}})
    r = await api.post(CHAT, chat(), headers={"OpenAI-Organization": "org-theirs"})
    assert r.status == 200
    assert upstream.last.headers["OpenAI-Organization"] == "org-ours"


async def test_one_401_is_probed_and_a_good_probe_keeps_the_key_awake(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    upstream.fail("401")
    r = await api.post(CHAT, chat())
    assert r.status == 401  # the only key: its answer, as sent
    await until(lambda: upstream.probes == 1 and not api.gw.relay.prober.tasks)
    probe = upstream.last
    assert (probe.method, probe.path) == ("GET", "/v1/models")
    assert probe.headers["Authorization"].startswith("Bearer sk-upstream-")
    (key,) = api.gw.state.keys.values()
    assert key.awake(time.time())
    assert (await api.post(CHAT, chat())).status == 200


async def test_a_revoked_key_sleeps_after_a_failed_probe_and_wakes_when_it_answers(
    make_gateway, make_upstream
):
    dead, alive = await make_upstream(), await make_upstream()
    api = await make_gateway(key_probe_interval=0.1)
    kid = await add_key(api, dead)
    await add_key(api, alive)
    dead.revoked = True
    for _ in range(2):  # round-robin: one of them meets the dead key and moves on
        assert (await api.post(CHAT, chat())).status == 200
    key = api.gw.state.keys[kid]
    await until(lambda: key.sleep_reason == "auth_failed")
    conf = await api.get("/x-conf")
    assert kid in conf.body["sleeping"]
    shown = next(k for k in conf.body["keys"] if k["ID"] == kid)
    assert shown["Sleeping"] and shown["SleepReason"] == "auth_failed"
    calls = len(dead.seen)
    for _ in range(3):
        assert (await api.post(CHAT, chat())).status == 200
    assert all(s.path == "/v1/models" for s in dead.seen[calls:])  # only probes reach it
    probes = dead.probes
    await until(lambda: dead.probes >= probes + 2)  # half-open: it keeps being probed
    assert key.sleep_reason == "auth_failed"
    dead.revoked = False
    await until(lambda: key.awake(time.time()))
    assert key.sleep_reason == "" and not api.gw.relay.prober.tasks
    await api.gw.store.flush()
    row = await api.gw.store.fetchone("SELECT * FROM provider_keys WHERE id = ?", (kid,))
    assert row["sleep_until"] == 0 and row["sleep_reason"] == ""
    for _ in range(2):
        assert (await api.post(CHAT, chat())).status == 200
    assert any(s.path == CHAT for s in dead.seen[-2:])  # back in the rotation


async def test_anthropic_keys_are_probed_with_x_api_key(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    upstream.revoked = True
    r = await api.post("/v1/messages", anthropic_body())
    assert r.status == 401
    (key,) = api.gw.state.keys.values()
    await until(lambda: key.sleep_reason == "auth_failed")
    probe = next(s for s in upstream.seen if s.path == "/v1/models")
    assert probe.headers["x-api-key"].startswith("sk-upstream-")
    assert probe.headers["anthropic-version"] and "Authorization" not in probe.headers
