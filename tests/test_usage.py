"""gw.usage, the usage-reading API, and the test kit that makes usage for it."""

import subprocess
import sys
from datetime import date, timedelta

import pytest

from xaiproxy import usage
from xaiproxy.testing import add_key, add_usage, add_user, chat, flush, gateway, start_upstream

D1, D2, D3 = date(2025, 3, 1), date(2025, 3, 2), date(2025, 3, 3)


@pytest.fixture
async def book(api):
    """root -> team (Rates 2) -> dev; usage on three days and two models."""
    team, team_key = await add_user(api, credit=100, Rates=2)
    dev, _ = await add_user(api, credit=10, key=team_key)
    await add_usage(api, team, model="gpt-4o", cost=1.0, prompt=10, completion=1, day=D1)
    await add_usage(api, dev, model="gpt-4o", cost=0.5, prompt=20, completion=2, day=D1)
    await add_usage(api, dev, model="gpt-4o-mini", cost=0.25, prompt=30, completion=3, day=D2)
    await add_usage(api, dev, model="gpt-4o", cost=2.0, prompt=40, completion=4, day=D3)
    state = api.gw.state
    return state.accounts[team], state.accounts[dev]


async def test_subtree_or_one_account_over_a_range_by_day_and_model(api, book):
    team, dev = book
    rows = await api.gw.usage.read(team, start=D1, end=D2, by=("day", "model"))
    got = [(r.day, r.model, r.requests, r.prompt_tokens, r.cost_n, r.cost) for r in rows]
    assert got == [
        (D1, "gpt-4o", 2, 30, 1_500_000_000, 3.0),  # team's Rates 2: its units
        (D2, "gpt-4o-mini", 1, 30, 250_000_000, 0.5),
    ]
    own = await api.gw.usage.read(team, by=("model",), subtree_too=False)
    assert [(r.day, r.model, r.requests, r.cost) for r in own] == [(None, "gpt-4o", 1, 2.0)]


async def test_totals_in_the_callers_units_and_by_account(api, book):
    team, dev = book
    total = await api.gw.usage.total(dev, units=team)  # dev's usage, valued as team pays
    assert (total.requests, total.total_tokens, total.cost_n) == (3, 99, 2_750_000_000)
    assert total.cost == 5.5 and total.day is None and total.model is None
    base = await api.gw.usage.total(usage.account(dev.id), start=D3)  # a scope: base units
    assert (base.requests, base.cost) == (1, 2.0)
    rows = await api.gw.usage.read(usage.accounts([team.id, dev.id]), by=("account",), units=1)
    assert [(r.account_id, r.requests) for r in rows] == [(team.id, 1), (dev.id, 3)]
    nothing = await api.gw.usage.total(team, start=D3 + timedelta(days=1))
    assert (nothing.requests, nothing.prompt_tokens, nothing.cost) == (0, 0, 0.0)


def test_days_are_inclusive_utc_dates():
    assert usage.last_days(3, until=D3) == (D1, D3)
    assert usage.day_number(D1) * 86400 == 1740787200
    assert usage.day_of(1740787200 + 86399) == D1


async def test_requests_become_readable_after_a_flush():
    async with start_upstream() as fake, gateway(flush_interval=30) as api:
        await add_key(api, fake)
        uid, key = await add_user(api)
        assert (await api.post("/v1/chat/completions", chat(), key=key)).status == 200
        acc = api.gw.state.accounts[uid]
        assert (await api.gw.usage.total(acc)).requests == 0  # queued, not yet committed
        await flush(api)
        assert (await api.gw.usage.total(acc)).requests == 1


def test_the_test_kit_imports_without_pytest():
    code = "import sys, xaiproxy.testing, xaiproxy.api; assert 'pytest' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
