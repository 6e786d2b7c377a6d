"""The money invariant under concurrency, and a restart that restores every balance exactly.

Creates, recharges, refunds, deletes and data-plane requests all run at once over
HTTP; afterwards, in base worth, balances + recorded spend + fees == what root minted,
memory and store agree, and a new gateway on the same file sees the same balances.
"""

import asyncio
import itertools
import random

from tests.fakes import add_key, chat, make_upstream, upstream  # noqa: F401 (fixtures)
from tests.helpers import start_gateway
from tests.plugins.test_users import new_user
from xaiproxy import ledger

_n = itertools.count(1)


def body(credit: float) -> dict:
    n = next(_n)
    return {"Name": f"swarm-{n}", "Email": f"swarm{n}@example.com", "CreditGranted": credit}


async def build(api):
    """4 payers at different Rates, each with 5 funded kids; returns [(id, key, [kids])]."""
    payers = []
    for i, rates in enumerate((1.0, 1.5, 2.0, 1.25)):
        pid, pkey = await new_user(api, f"payer-{i}", 3000, Rates=rates)
        kids = [await new_user(api, f"kid-{i}-{k}", 50, key=pkey) for k in range(5)]
        payers.append((pid, pkey, kids))
    return payers


def swarm(api, payers, rng: random.Random) -> list:
    calls = []
    for _ in range(40):
        _, pkey, _ = rng.choice(payers)
        calls.append(api.post("/x-users", body(rng.choice([2, 5, 12.5])), key=pkey))
    for _ in range(40):
        _, pkey, kids = rng.choice(payers)
        kid = rng.choice(kids)[0]
        calls.append(
            api.put(f"/x-users/{kid}", {"CreditGranted": rng.choice([1, 3.3, 7])}, key=pkey)
        )
    for _ in range(30):
        _, pkey, kids = rng.choice(payers)
        calls.append(api.put(f"/x-users/{rng.choice(kids)[0]}", {"CreditGranted": -2.5}, key=pkey))
    for _, pkey, kids in payers:
        calls.append(api.delete(f"/x-users/{kids[0][0]}", key=pkey))
        calls.append(api.put(f"/x-users/{kids[1][0]}", {"Rates": 3}, key=pkey))
    calls.append(api.delete(f"/x-users/{payers[3][0]}"))  # a payer, while its kids are busy
    for _ in range(80):
        _, _, kids = rng.choice(payers)
        calls.append(api.post("/v1/chat/completions", chat(), key=rng.choice(kids)[1]))
    rng.shuffle(calls)
    return calls


async def memory_matches_store(api) -> dict[int, int]:
    balances = {}
    for acc in api.gw.state.accounts.values():
        if acc.is_root:
            continue
        stored = await api.gw.store.scalar(
            "SELECT COALESCE(SUM(remaining_n), 0) FROM grants WHERE account_id = ?"
            " AND expires_at > strftime('%s', 'now')",
            (acc.id,),
        )
        assert stored == ledger.balance_n(acc), acc.name
        assert acc.reserved_n == 0
        balances[acc.id] = ledger.balance_n(acc)
    return balances


async def test_invariant_and_restart(aiohttp_server, tmp_path, upstream):  # noqa: F811
    path = tmp_path / "invariant.db"
    api = await start_gateway(aiohttp_server, path)
    try:
        await add_key(api, upstream)
        payers = await build(api)
        replies = await asyncio.gather(*swarm(api, payers, random.Random(7)))
        statuses = [r.status for r in replies]
        assert 500 not in statuses and statuses.count(200) > 150, statuses
        await api.gw.store.flush()
        report = await ledger.audit(api.gw.store)
        assert report["ok"], report
        assert report["spent_n"] > 0 and report["fees_n"] > 0
        assert await api.gw.store.scalar("SELECT COUNT(*) FROM usage") > 40
        balances = await memory_matches_store(api)
        shape = {a.id: (a.parent_id, a.dna, a.level) for a in api.gw.state.accounts.values()}
    finally:
        await api.close()
    again = await start_gateway(aiohttp_server, path)
    try:
        state = again.gw.state
        assert {a.id: ledger.balance_n(a) for a in state.accounts.values() if not a.is_root} == (
            balances
        )
        assert {a.id: (a.parent_id, a.dna, a.level) for a in state.accounts.values()} == shape
        assert (await ledger.audit(again.gw.store))["ok"]
    finally:
        await again.close()
