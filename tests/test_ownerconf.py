"""Owner config is bounded (SPEC 6) and compiled once: a request's cost never grows with it."""

from __future__ import annotations

import time

from tests.fakes import add_user, chat, ready, set_config
from xaiproxy import limits

pytest_plugins = ["tests.fakes_fixtures"]


def _table(n: int, last: str, value) -> dict:
    """n entries: n - 1 globs no test model matches, then `last` (which they all match)."""
    out = {f"family-{i}-*": value for i in range(n - 1)}
    out[last] = value
    return out


async def test_lists_are_capped_at_1000_entries_and_200_characters(api):
    too_many = _table(1001, "gpt-*", {"rpm": 5})
    for key, value in (
        ("MODEL_LIMITS", too_many),
        ("PRICING", {k: {"input": 1} for k in too_many}),
        ("MODEL_MAPPER", {k: "gpt-4o" for k in too_many}),
        ("LEVEL_MAPPER", ", ".join(f"{k}=2" for k in too_many)),
        ("RESOURCES", [f"/v1/x{i}" for i in range(1001)]),
        ("MODEL_LIMITS", {"m" * 201: {"rpm": 1}}),
    ):
        r = await api.put("/x-config", {key: value})
        assert r.status == 400 and r.error_code == "invalid_config", (key, r.body)
    assert (await api.get("/x-config")).body["configs"] == {}
    # 1,000 is fine; a merge that would make 1,001 is refused and changes nothing.
    await set_config(api, MODEL_LIMITS=_table(1000, "m" * 200, {"rpm": 5}))
    r = await api.put("/x-config", {"MODEL_LIMITS": {"one-more": {"rpm": 1}}})
    assert r.status == 400 and "1000" in r.body["error"]["message"]
    assert len((await api.get("/x-config")).body["configs"]["MODEL_LIMITS"]) == 1000


def _per_lookup(cfg, acc, names: list[str]) -> float:
    """Seconds per admission's worth of config lookups (mapper, level, price, model limits)."""
    started = time.perf_counter()
    for name in names:
        cfg.map_model(name)
        cfg.level_of(name)
        cfg.prices(name)
        limits.scopes(acc, cfg.model_limits, name)
    return (time.perf_counter() - started) / len(names)


async def _cost(api, acc, n: int, round_: int) -> float:
    await set_config(
        api,
        MODEL_LIMITS="*",
        PRICING="*",
        MODEL_MAPPER=_table(n, "gpt-*", "gpt-4o-mini"),
        LEVEL_MAPPER=_table(n, "gpt-*", 1),
    )
    await set_config(
        api,
        MODEL_LIMITS=_table(n, "gpt-*", {"rpm": 1000}),
        PRICING=_table(n, "gpt-*", {"input": 1, "output": 2}),
    )
    cfg = api.gw.config(1)
    _per_lookup(cfg, acc, ["gpt-warm"])  # compiles lazily built parts once
    # Every name is new: no cache can hide the table's size.
    return _per_lookup(cfg, acc, [f"gpt-{round_}-{n}-{i}" for i in range(300)])


async def test_admission_cost_does_not_grow_with_config_size(make_gateway, upstream):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api)
    acc = api.gw.state.accounts[uid]
    small = min([await _cost(api, acc, 1, r) for r in range(3)])
    big = min([await _cost(api, acc, 1000, r) for r in range(3)])
    # Linear matching costs ~1,000 regex calls per lookup (hundreds of microseconds);
    # compiled tables cost a few block tests. The bound is generous for a busy machine.
    assert big < max(15 * small, 100e-6), (small, big)
    # And the 1,000th entry is the one that applies, end to end.
    await set_config(api, MODEL_LIMITS=_table(1000, "gpt-*", {"rpm": 1}))
    assert (await api.post("/v1/chat/completions", chat("gpt-new"), key=key)).status == 200
    r = await api.post("/v1/chat/completions", chat("gpt-new"), key=key)
    assert r.status == 429 and r.error_code == "rate_limit_exceeded"
    assert upstream.last.json["model"] == "gpt-4o-mini"  # the last MODEL_MAPPER entry
