"""GET /metrics: counters move by exactly what the requests did; scrape-time gauges are live."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import (  # noqa: F401 (fixtures)
    add_key,
    add_user,
    chat,
    make_upstream,
    ready,
    set_config,
    update_user,
    upstream,
)
from xaiproxy import metrics
from xaiproxy.ledger import NANO

CHAT = "/v1/chat/completions"


async def scrape(api) -> dict:
    """{(sample name, sorted label items): value} from the gateway's own /metrics."""
    r = await api.get("/metrics", key="")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.raw.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels) -> float:
    """Sum of a sample over every label set that includes `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def moved(before: dict, after: dict, name: str, **labels) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


async def test_requests_tokens_cost_and_rejections_move_exactly(make_gateway, upstream):  # noqa: F811
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, credit=50)
    before = await scrape(api)
    for body in (chat(), chat(), chat(stream=True)):
        assert (await api.post(CHAT, body, key=key)).status == 200
    assert (await api.post(CHAT, chat(), key="sk-Xvs" + "n" * 45)).status == 401
    await update_user(api, uid, RPM=1)
    limited = [(await api.post(CHAT, chat(), key=key)).status for _ in range(2)]
    assert limited == [200, 429]
    await api.gw.store.flush()
    after = await scrape(api)

    ok = {"path": CHAT, "status": "200", "owner": "1"}
    assert moved(before, after, "xaiproxy_requests_total", **ok) == 4
    assert moved(before, after, "xaiproxy_requests_total", path=CHAT, status="401", owner="") == 1
    assert moved(before, after, "xaiproxy_requests_total", path=CHAT, status="429") == 1
    assert moved(before, after, "xaiproxy_requests_total", path="/x-users/{ident}") == 1
    assert moved(before, after, "xaiproxy_rejections_total", reason="invalid_api_key") == 1
    assert moved(before, after, "xaiproxy_rejections_total", reason="rate_limit_exceeded") == 1
    assert moved(before, after, "xaiproxy_upstream_attempts_total") == 4
    assert moved(before, after, "xaiproxy_upstream_failures_total") == 0

    row = await api.gw.store.fetchone(
        "SELECT SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_n), COUNT(*) FROM usage"
    )
    assert row[3] == 4
    assert moved(before, after, "xaiproxy_tokens_total", kind="prompt") == row[0]
    assert moved(before, after, "xaiproxy_tokens_total", kind="completion") == row[1]
    assert abs(moved(before, after, "xaiproxy_cost_usd_total") - row[2] / NANO) < 1e-12
    six = {"le": "+Inf"}
    assert moved(before, after, "xaiproxy_request_duration_seconds_count") == 6
    assert moved(before, after, "xaiproxy_time_to_first_byte_seconds_bucket", **six) == 4
    assert moved(before, after, "xaiproxy_time_to_first_byte_seconds_count", stream="true") == 1


async def test_failures_fallbacks_and_key_sleeps(make_gateway, upstream):  # noqa: F811
    api = await ready(make_gateway, upstream)
    second = await add_key(api, upstream)
    before = await scrape(api)
    upstream.fail("500")
    assert (await api.post(CHAT, chat())).status == 200  # one key answers 500, the other 200
    upstream.fail("429:60")
    assert (await api.post(CHAT, chat())).status == 200  # one key is put to sleep
    after = await scrape(api)
    assert moved(before, after, "xaiproxy_upstream_attempts_total", level="1") == 4
    assert moved(before, after, "xaiproxy_upstream_failures_total", outcome="500") == 1
    assert moved(before, after, "xaiproxy_upstream_failures_total", outcome="429") == 1
    assert moved(before, after, "xaiproxy_upstream_failures_total") == 2
    fallbacks = {"from_level": "1", "to_level": "1"}
    assert moved(before, after, "xaiproxy_upstream_fallbacks_total", **fallbacks) == 2
    assert moved(before, after, "xaiproxy_key_sleeps_total", reason="rate_limited") == 1
    assert moved(before, after, "xaiproxy_key_sleeps_total", reason="auth") == 0
    sleeping = total(after, "xaiproxy_keys_sleeping", owner="1", level="1")
    assert sleeping == 1 and second in api.gw.state.keys


async def test_probe_outcomes_and_the_sleep_they_cause(make_gateway, upstream):  # noqa: F811
    api = await ready(make_gateway, upstream, key_probe_interval=60)
    (key,) = api.gw.state.keys.values()
    before = await scrape(api)
    upstream.revoked = True  # 401 to the request, then to the probe
    assert (await api.post(CHAT, chat())).status == 401
    for _ in range(200):
        if key.sleep_reason == "auth_failed":
            break
        await asyncio.sleep(0.02)
    after = await scrape(api)
    assert moved(before, after, "xaiproxy_key_probes_total", outcome="refused") == 1
    assert moved(before, after, "xaiproxy_key_probes_total") == 1
    assert moved(before, after, "xaiproxy_key_sleeps_total", reason="auth_failed") == 1
    assert moved(before, after, "xaiproxy_key_sleeps_total", reason="rate_limited") == 0


async def test_store_and_stream_gauges_are_read_at_scrape_time(api):
    samples = await scrape(api)
    assert total(samples, "xaiproxy_streams_open") == 0
    assert total(samples, "xaiproxy_store_queue_depth") == 0
    flushes = total(samples, "xaiproxy_store_flushes_total")
    api.gw.streams_open = 3  # what the relay keeps while it relays
    await api.post("/x-config", {"USER_MIN_BALANCE": 4})  # one committed unit
    samples = await scrape(api)
    assert total(samples, "xaiproxy_streams_open") == 3
    assert total(samples, "xaiproxy_store_flushes_total") > flushes
    assert total(samples, "xaiproxy_store_last_flush_seconds") > 0
    api.gw.streams_open = 0


async def test_registries_are_per_app(make_gateway):
    a, b = await make_gateway(), await make_gateway()
    await a.get("/healthz", key="")
    await asyncio.gather(a.get("/healthz", key=""), a.get("/healthz", key=""))
    sa, sb = await scrape(a), await scrape(b)
    health = {"path": "/healthz", "status": "200"}
    assert total(sa, "xaiproxy_requests_total", **health) == 3
    assert total(sb, "xaiproxy_requests_total", **health) == 0


async def test_metrics_off_means_no_endpoint_and_no_hook(make_gateway):
    api = await make_gateway(metrics=False)
    assert (await api.get("/metrics", key="")).status == 404
    assert not any(
        getattr(fn, "__self__", None).__class__ is metrics.Metrics
        for fn in api.gw.hooks.on_request_end
    )


async def test_path_labels_are_bounded(api):
    for path in ("/v1/made-up-1", "/v1/made-up-2", "/x-users/nobody1", "/x-users/nobody2", "/zz1"):
        await api.get(path)
    samples = await scrape(api)
    paths = {dict(ls)["path"] for (n, ls) in samples if n == "xaiproxy_requests_total"}
    assert {"/v1/other", "/x-users/{ident}", "other"} <= paths
    assert not any("nobody" in p or "made-up" in p or "zz1" in p for p in paths)


def test_failed_outcomes():
    assert metrics.failed("timeout") and metrics.failed(503) and metrics.failed(429)
    assert not metrics.failed(200) and not metrics.failed(400)


async def test_every_metric_is_documented(api):
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "OPERATIONS.md").read_text()
    names = {family.name for family in api.gw.app[metrics.METRICS].registry.collect()}
    assert names and not [n for n in sorted(names) if f"`{n}" not in doc]


async def test_label_values_are_bounded(make_gateway, upstream):  # noqa: F811
    api = await ready(make_gateway, upstream)
    _, key = await add_user(api, credit=50)
    for i in range(20):  # random model names: the upstream answers them all
        assert (await api.post(CHAT, chat(f"made-up-{i}"), key=key)).status == 200
    assert (await api.post(CHAT, chat("gpt-4o-mini"), key=key)).status == 200
    models = {
        dict(ls).get("model") for (n, ls) in await scrape(api) if n == "xaiproxy_tokens_total"
    }
    assert models == {"other", "gpt-4o-mini"}
    # An open-ended label keeps its first values; later ones are "other".
    label = metrics.Bounded(cap=2)
    assert [label(v) for v in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]


async def test_metrics_token(make_gateway):
    api = await make_gateway(metrics_token="s3cret-metrics")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-metrics"}):
        r = await api.get("/metrics", key="", headers=headers)
        assert r.status == 401 and r.error_code == "invalid_metrics_token"
        assert "xaiproxy_" not in r.raw.decode()
    r = await api.get("/metrics", key="s3cret-metrics")
    assert r.status == 200 and b"xaiproxy_requests_total" in r.raw
