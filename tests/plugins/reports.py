"""Helpers shared by the report tests: subaccounts through /x-users, usage rows as the data plane writes them."""

from datetime import UTC, datetime

from xaiproxy.ledger import NANO

USAGE_SQL = (
    "INSERT INTO usage (ts, account_id, owner_id, dna, model, upstream_model, prompt_tokens,"
    " completion_tokens, cached_tokens, cost, cost_n) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


async def new_user(api, name: str, credit: float = 100, key: str | None = None, **fields):
    """Create a subaccount through /x-users (as `key`, default root); return (id, key)."""
    body = {"Name": name, "Email": f"{name}@example.com", "CreditGranted": credit, **fields}
    r = await api.post("/x-users", body, key=key)
    assert r.status == 200, r.body
    return r.body["User"]["ID"], r.body["User"]["SecretKey"]


def usage_row(api, account_id, ts, model="gpt-4o", prompt=100, completion=20, cached=0, base=0.01):
    """One usage record as the data plane writes it; `base` is the cost in base worth (USD)."""
    acc = api.gw.state.accounts[account_id]
    cost_n = round(base * NANO)
    values = (ts, acc.id, acc.owner_acc.id, acc.dna, model, model, prompt, completion, cached)
    return USAGE_SQL, (*values, base * acc.rates, cost_n)


async def add_usage(api, rows):
    await api.gw.store.write([usage_row(api, *r[:2], **(r[2] if len(r) > 2 else {})) for r in rows])


def midnight(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
