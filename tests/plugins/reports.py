"""Helpers shared by the report tests: subaccounts through /x-users, usage rows as the data plane writes them."""

from datetime import UTC, datetime

from xaiproxy.ledger import NANO
from xaiproxy.store import UsageRecord
from xaiproxy.store.sqlite import USAGE_COLUMNS


async def new_user(api, name: str, credit: float = 100, key: str | None = None, **fields):
    """Create a subaccount through /x-users (as `key`, default root); return (id, key)."""
    body = {"Name": name, "Email": f"{name}@example.com", "CreditGranted": credit, **fields}
    r = await api.post("/x-users", body, key=key)
    assert r.status == 200, r.body
    return r.body["User"]["ID"], r.body["User"]["SecretKey"]


def usage_row(api, account_id, ts, model="gpt-4o", prompt=100, completion=20, cached=0, base=0.01):
    """One usage record as the data plane writes it; `base` is the cost in base worth (USD)."""
    acc = api.gw.state.accounts[account_id]
    values = {
        "ts": ts,
        "account_id": acc.id,
        "owner_id": acc.owner_acc.id,
        "dna": acc.dna,
        "model": model,
        "upstream_model": model,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": cached,
        "cost": base * acc.rates,
        "cost_n": round(base * NANO),
    }
    blank = {"path": "", "request_id": ""}
    return UsageRecord._make(values.get(c, blank.get(c, 0)) for c in USAGE_COLUMNS)


async def add_usage(api, rows):
    """Through the writer's usage lane, which also keeps the usage_daily rollup."""
    for r in rows:
        api.gw.store.submit_usage(usage_row(api, *r[:2], **(r[2] if len(r) > 2 else {})), [])
    await api.gw.store.flush()


def midnight(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
