"""A 1,100-deep chain of accounts: tree operations iterate, and a delete is all or nothing.

Deleting an account at the top of the chain re-attaches (and re-levels) the 1,099
below it without recursion; memory and the database agree, before and after a restart.
"""

from tests.fakes import set_config
from tests.helpers import start_gateway
from xaiproxy import ledger

DEPTH = 1_100


async def chain(api, depth: int) -> list[tuple[int, str]]:
    """root -> a1 -> a2 -> ... -> a{depth}, each created by its parent; [(id, key)]."""
    await set_config(api, USER_API_BALANCE=0, USER_MIN_BALANCE=1)
    out, key = [], None
    for i in range(depth):
        body = {"Name": f"deep-{i}", "Email": f"deep{i}@example.com", "CreditGranted": 1}
        r = await api.post("/x-users", body, key=key)
        assert r.status == 200, (i, r.body)
        key = r.body["User"]["SecretKey"]
        out.append((r.body["User"]["ID"], key))
    return out


def shape(state) -> dict:
    return {a.id: (a.parent_id, a.dna, a.level) for a in state.accounts.values()}


async def stored_shape(api) -> dict:
    rows = await api.gw.store.fetchall("SELECT id, parent_id, dna, level FROM accounts")
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def test_delete_at_the_top_of_a_deep_chain(aiohttp_server, tmp_path):
    path = tmp_path / "deep.db"
    api = await start_gateway(aiohttp_server, path)
    try:
        accounts = await chain(api, DEPTH)
        state = api.gw.state
        leaf = state.accounts[accounts[-1][0]]
        assert leaf.level == DEPTH
        r = await api.delete(f"/x-users/{accounts[0][0]}")
        assert r.status == 200, r.body
        assert len(r.body["User"]["Moved"]) == DEPTH - 1
        assert leaf.level == DEPTH - 1 and leaf.dna.startswith(f".1.{accounts[1][0]}.")
        for acc in state.accounts.values():
            if not acc.is_root:
                assert acc.dna == f"{acc.parent.dna}{acc.id}." and acc.level == acc.parent.level + 1
        r = await api.delete(f"/x-users/{accounts[DEPTH // 2][0]}")  # and one in the middle
        assert r.status == 200 and leaf.level == DEPTH - 2
        await api.gw.store.flush()
        assert await stored_shape(api) == shape(state)
        assert (await ledger.audit(api.gw.store))["ok"]
        # The leaf still works as a key and a parent of nothing.
        assert (await api.get("/x-users", key=accounts[-1][1])).status == 200
        before = shape(state)
    finally:
        await api.close()
    again = await start_gateway(aiohttp_server, path)
    try:
        assert shape(again.gw.state) == before
    finally:
        await again.close()
