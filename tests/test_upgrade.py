"""Upgrades: today's release starts on a database written by the first release.

tests/fixtures/v1.sql is a dump of a database the first release (schema version 1)
wrote through its own API; the expected figures below are what that release
reported before it stopped.
"""

import sqlite3
from pathlib import Path

import pytest

from tests.fakes import chat
from tests.procs import CHECKOUT, serve
from xaiproxy.store.sqlite_schema import MIGRATIONS

pytest_plugins = ["tests.fakes_fixtures"]

pytestmark = pytest.mark.timeout(60)

FIXTURE = Path(__file__).parent / "fixtures" / "v1.sql"
# ID: (name, email, parent ID, CreditGranted, Balance) as the first release showed them.
ACCOUNTS = {
    2: ("alice", "alice@example.com", 1, 100.0, 79.9999868),
    3: ("bobby", "bobby@example.com", 1, 75.0, 74.9999582),
    4: ("carol", "carol@example.com", 2, 20.0, 19.9999916),
}
KEYS = {  # each account's key, shown once by the first release
    2: "sk-XvsbWVghGr81gdW-5sk_0ylJjl2qJScD7eSCEZ38iad4NX7D",
    3: "sk-XvsJyUGjuw-RbzoGu1RWYMpNTOzIMI8mH_BWLz5lDtaTRW69",
    4: "sk-XvsMKYoZUuY0oX6k5DXq-hDNGTuXo662VnVixVDctcisQzW2",
}


def v1_database(path) -> None:
    con = sqlite3.connect(path)
    con.executescript(FIXTURE.read_text())
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    con.close()


async def test_first_release_database_is_migrated_and_keeps_every_account(tmp_path, upstream):
    db = tmp_path / "v1.db"
    v1_database(db)
    con = sqlite3.connect(db)
    old_cost = con.execute("SELECT SUM(cost), COUNT(*) FROM usage").fetchone()
    con.close()
    gw = await serve(CHECKOUT, db, tmp_path)
    try:
        status, users = await gw.call("GET", "/x-dna")
        assert status == 200
        seen = {
            u["ID"]: (u["Name"], u["Email"], u["ParentID"], u["CreditGranted"], u["Balance"])
            for u in users
        }
        assert seen == ACCOUNTS
        for uid, key in KEYS.items():  # the old key hashes still authenticate
            status, body = await gw.call("GET", "/dashboard/x-user-status", key=key)
            assert status == 200 and body["id"] == uid, body

        # The daily rollup (schema 2) was built from the old usage rows.
        status, bill = await gw.call("GET", "/x-bill?start=2026-12-01&end=2026-12-31")
        assert status == 200
        assert bill["total_usage"]["requests"] == old_cost[1] == 7
        assert bill["total_usage"]["cost"] == pytest.approx(old_cost[0], abs=1e-9)

        # The old provider key is still there; pointed at today's fake, it serves and bills.
        status, listed = await gw.call("GET", "/x-keys")
        assert status == 200 and len(listed) == 1
        status, _ = await gw.call("PUT", f"/x-keys/{listed[0]['ID']}", {"Provider": upstream.url})
        assert status == 200
        status, _ = await gw.call("POST", "/v1/chat/completions", chat(), key=KEYS[4])
        assert status == 200
        status, after = await gw.call("GET", "/x-users/carol")
        assert status == 200 and after["Balance"] < ACCOUNTS[4][4]
    finally:
        await gw.stop()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 8
    con.close()
