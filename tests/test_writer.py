"""The batched writer isolates units, and a management change that was not stored is undone.

Real SQLite files throughout: a unit that raises anything (OverflowError included) is
rolled back alone; the data plane's fast lane has its own savepoint; a management call
whose unit fails answers an error and leaves memory as it was.
"""

import asyncio
import sqlite3

from tests.helpers import start_gateway
from tests.plugins.test_users import new_user
from xaiproxy import ledger
from xaiproxy.store import UsageRecord
from xaiproxy.store.sqlite import USAGE_COLUMNS
from xaiproxy.store.sqlite import SQLiteStore as Store

NOTE = "INSERT INTO op_logs (ts, operator_id, target_id, action, details, status) VALUES (?, ?, ?, ?, ?, ?)"


def note(text: str, target: int = 0) -> tuple:
    return (NOTE, (0.0, 1, target, "test", text, "success"))


def usage_row(request_id: str, tokens: int) -> UsageRecord:
    values = dict.fromkeys(USAGE_COLUMNS, 0)
    values |= {"dna": ".1.", "model": "m", "upstream_model": "m", "path": "/v1/x"}
    values |= {"request_id": request_id, "prompt_tokens": tokens, "status": 200}
    return UsageRecord._make(values[c] for c in USAGE_COLUMNS)


async def test_one_failing_unit_rolls_back_alone(tmp_path):
    store = Store(str(tmp_path / "w.db"), flush_interval=0.05)
    await store.open()
    try:
        store.submit_usage(usage_row("good-1", 5), [])
        store.submit_usage(usage_row("bad", 2**64), [])  # OverflowError when bound
        store.submit_usage(usage_row("good-2", 7), [])
        futures = [
            store.submit([note("a")], wait=True),
            store.submit([note("b1"), (NOTE, (0.0, 1, 2**64, "x", "b2", "s"))], wait=True),
            store.submit([note("c")], wait=True),
            store.submit([note("d"), ("INSERT INTO nowhere VALUES (1)", ())], wait=True),
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], OverflowError)
        assert isinstance(results[3], sqlite3.OperationalError)
        details = [r[0] for r in await store.fetchall("SELECT details FROM op_logs ORDER BY id")]
        assert details == ["a", "c"]  # b1 and d went with their units, nothing else did
        ids = [r[0] for r in await store.fetchall("SELECT request_id FROM usage ORDER BY id")]
        assert ids == ["good-1", "good-2"]
        assert store.write_errors == 3
    finally:
        await store.close()


TRIGGER = """CREATE TRIGGER doom BEFORE INSERT ON op_logs
WHEN NEW.details LIKE '%doomed%' OR NEW.target_id = {victim}
BEGIN SELECT RAISE(ABORT, 'doomed'); END"""


async def test_failed_management_unit_is_undone_in_memory(aiohttp_server, tmp_path):
    path = tmp_path / "undo.db"
    api = await start_gateway(aiohttp_server, path)
    try:
        pid, pkey = await new_user(api, "payer-undo", 300)
        vid, vkey = await new_user(api, "doomed-victim", 40, key=pkey)
        kid, _ = await new_user(api, "victim-kid", 5, key=vkey)
        state = api.gw.state
        payer, victim = state.accounts[pid], state.accounts[vid]
        before = (ledger.balance_n(payer), ledger.balance_n(victim), victim.hard_limit)
        with sqlite3.connect(path) as conn:
            conn.execute(TRIGGER.format(victim=vid))
        doomed = {"Name": "doomed-new", "Email": "doomed@example.com", "CreditGranted": 30}
        doomed_calls = [
            lambda: api.post("/x-users", doomed, key=pkey),
            lambda: api.put(f"/x-users/{vid}", {"CreditGranted": 10, "Name": "doomed-x"}, key=pkey),
            lambda: api.put(f"/x-users/{vid}", {"CreditGranted": -5, "RPM": 7}, key=pkey),
            lambda: api.delete(f"/x-users/{vid}", key=pkey),
        ]
        for i, call in enumerate(doomed_calls):
            # Each doomed unit shares its batch with others' creates, which must commit.
            fine = [
                api.post(
                    "/x-users",
                    {"Name": f"fine-{i}-{j}", "Email": f"f{i}{j}@example.com", "CreditGranted": 3},
                )
                for j in range(3)
            ]
            failed, *fine = await asyncio.gather(call(), *fine)
            assert (failed.status, failed.error_code) == (500, "write_failed"), failed.body
            assert [r.status for r in fine] == [200] * 3
        assert "doomed-new" not in state.by_name and "doomed-x" not in state.by_name
        assert state.accounts[vid] is victim and victim.name == "doomed-victim"
        assert victim.rpm == 0 and victim.credit_granted == 40
        assert state.accounts[kid].parent is victim and not victim.deleted
        assert (ledger.balance_n(payer), ledger.balance_n(victim), victim.hard_limit) == before
        await api.gw.store.flush()
        assert (await ledger.audit(api.gw.store))["ok"]
        balances = {a.id: ledger.balance_n(a) for a in state.accounts.values()}
    finally:
        await api.close()
    again = await start_gateway(aiohttp_server, path)
    try:
        state = again.gw.state
        assert {a.id: ledger.balance_n(a) for a in state.accounts.values()} == balances
        assert state.accounts[kid].parent_id == vid
    finally:
        await again.close()
