"""Local commands: --version, init, prices, backup (online, under load), and serve's start errors."""

import asyncio
import importlib.metadata
import shutil
import sqlite3
import stat

import pytest

from tests.fakes import chat
from tests.helpers import start_gateway
from tests.procs import CHECKOUT, clean_env, run, serve
from xaiproxy import __version__, ledger, pricing
from xaiproxy import settings as settings_mod

pytest_plugins = ["tests.fakes_fixtures"]

pytestmark = pytest.mark.timeout(90)


async def test_version_is_the_distributions(tmp_path):
    code, out, _ = await run([*CHECKOUT, "--version"], cwd=tmp_path)
    assert code == 0
    assert out.strip() == f"xaiproxy {__version__}"
    assert importlib.metadata.version("xaiproxy") == __version__  # setup.cfg reads it


def uncommented(text: str) -> str:
    return "\n".join(
        line[2:] if line.startswith("# ") and "=" in line.split("#")[1][:40] else line
        for line in text.splitlines()
        if not line.startswith("# prices")
    )


async def test_init_writes_a_commented_config_that_documents_the_defaults(tmp_path):
    code, out, err = await run([*CHECKOUT, "init", "etc"], cwd=tmp_path)
    assert code == 0, err
    written = tmp_path / "etc" / "xaiproxy.toml"
    assert f"--config {written.relative_to(tmp_path)}" in out
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    text = written.read_text()
    defaults = settings_mod.Settings(config=str(written))
    # As written, nothing is set: defaults can still move in a later release.
    assert settings_mod.load(str(written), env={}) == defaults
    # Uncommented, every line states the built-in default (the file cannot lie).
    live = tmp_path / "live.toml"
    live.write_text(uncommented(text))
    assert settings_mod.load(str(live), env={}) == defaults.replace(config=str(live))
    assert "max_inflight = 2048" in live.read_text()

    code, _, err = await run([*CHECKOUT, "init", "etc"], cwd=tmp_path)
    assert code == 1 and "exists" in err and written.read_text() == text
    code, _, _ = await run([*CHECKOUT, "init", "--force", str(tmp_path / "etc")])
    assert code == 0


async def test_prices_shows_the_shipped_table_and_where_it_is(tmp_path):
    code, out, err = await run([*CHECKOUT, "prices"], cwd=tmp_path)
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith(f"price table: shipped with xaiproxy {__version__}: ")
    assert first.endswith("prices.toml")
    shipped = pricing.load()("gpt-4o-mini")
    row = next(line.split() for line in out.splitlines() if line.startswith("gpt-4o-mini "))
    assert [float(x) for x in row[1:3]] == [shipped.input, shipped.output]


async def test_prices_of_a_table_of_ones_own(tmp_path):
    (tmp_path / "mine.toml").write_text('["my-model"]\ninput = 7.5\noutput = 9\n')
    (tmp_path / "xaiproxy.toml").write_text('prices = "mine.toml"\n')
    code, out, err = await run([*CHECKOUT, "prices", "--config", "xaiproxy.toml"], cwd=tmp_path)
    assert code == 0, err
    assert out.splitlines()[0] == (
        f"price table: {tmp_path / 'mine.toml'} (set by prices in xaiproxy.toml)"
    )
    assert out.splitlines()[-1].split() == ["my-model", "7.5", "9", "7.5", "7.5"]
    code, out, _ = await run([*CHECKOUT, "prices", "--toml", "--config", "xaiproxy.toml"], tmp_path)
    assert out == (tmp_path / "mine.toml").read_text()


@pytest.mark.parametrize("command", ["prices", "serve"])
async def test_a_bad_price_table_is_a_clear_error_not_a_traceback(tmp_path, command):
    (tmp_path / "bad.toml").write_text('["m"]\ninput = "cheap"\n')
    for table, words in (("missing.toml", "No such file"), ("bad.toml", "could not convert")):
        env = clean_env(XAI_PRICES=table, XAI_DB=str(tmp_path / "x.db"))
        code, out, err = await run([*CHECKOUT, command], cwd=tmp_path, env=env)
        assert code == 2, out + err
        assert f"xaiproxy: price table {tmp_path / table}: " in err and words in err
        assert "Traceback" not in err
    assert not (tmp_path / "x.db").exists()


async def test_a_postgresql_database_without_redis_is_refused(tmp_path):
    env = clean_env(XAI_DB="postgresql://xaiproxy:pw@db/xaiproxy")
    code, out, err = await run([*CHECKOUT, "serve"], cwd=tmp_path, env=env)
    assert code == 2 and "needs the 'redis' setting" in err and "pw@" not in err, out + err
    assert not list(tmp_path.iterdir())  # no directory named after the URL


async def test_backup_of_a_postgresql_database_points_to_pg_dump(tmp_path):
    env = clean_env(XAI_REDIS="redis://127.0.0.1:9/0")
    db = "postgresql://xaiproxy:pw@db/xaiproxy"
    code, out, err = await run([*CHECKOUT, "backup", "copy.db", "--db", db], cwd=tmp_path, env=env)
    assert code == 1 and "pg_dump" in err and "pw@" not in out + err, out + err
    assert not list(tmp_path.iterdir())


async def test_backup_refuses_a_missing_database_and_itself(tmp_path):
    code, _, err = await run([*CHECKOUT, "backup", "copy.db", "--db", "nope.db"], cwd=tmp_path)
    assert code == 1 and "no database at nope.db" in err
    assert not (tmp_path / "nope.db").exists() and not (tmp_path / "copy.db").exists()
    sqlite3.connect(tmp_path / "live.db").close()
    code, _, err = await run([*CHECKOUT, "backup", "live.db", "--db", "live.db"], cwd=tmp_path)
    assert code == 1 and "overwrite the database itself" in err


def audit(path) -> dict[int, int]:
    """Check one backup file; return {account id: balance_n}. Spend == what grants lost."""
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        rows = con.execute(
            "SELECT a.id, COALESCE(SUM(g.amount_n - g.remaining_n), 0), COALESCE(SUM(g.remaining_n), 0),"
            " (SELECT COALESCE(SUM(cost_n), 0) FROM usage u WHERE u.account_id = a.id)"
            " FROM accounts a LEFT JOIN grants g ON g.account_id = a.id"
            " WHERE a.parent_id IS NOT NULL GROUP BY a.id"
        ).fetchall()
        for acc, drawn, _, spent in rows:
            assert drawn == spent, (path, acc)  # a torn copy would split the two
        return {acc: balance for acc, _, balance, _ in rows}
    finally:
        con.close()


def usage_rows(path) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
    finally:
        con.close()


async def restored_balances(aiohttp_server, path) -> dict[int, int]:
    """Start a gateway on a copy of `path` and read every balance over HTTP."""
    api = await start_gateway(aiohttp_server, path)
    try:
        r = await api.get("/x-dna", params={"size": "100"})
        assert r.status == 200, r.body
        return {u["ID"]: ledger.to_n(u["Balance"], u["Rates"]) for u in r.body}
    finally:
        await api.close()


async def test_backup_under_load_is_consistent_and_restores_every_balance(
    tmp_path, upstream, aiohttp_server
):
    db = tmp_path / "live.db"
    gw = await serve(CHECKOUT, db, tmp_path)
    try:
        status, _ = await gw.call(
            "POST",
            "/x-keys",
            {"SecretKey": "sk-up-backup-abcdefgh", "Level": 1, "Provider": upstream.url},
        )
        assert status == 201
        keys = []
        for n in range(4):
            user = {"Name": f"payer{n}", "Email": f"p{n}@example.com", "CreditGranted": 50}
            status, body = await gw.call("POST", "/x-users", user)
            assert status == 200, body
            keys.append(body["User"]["SecretKey"])

        stop = asyncio.Event()

        async def load(key: str, stream: bool) -> None:
            while not stop.is_set():
                status, _ = await gw.call("POST", "/v1/chat/completions", chat(stream=stream), key)
                assert status == 200

        workers = [asyncio.create_task(load(k, n % 2 == 0)) for n, k in enumerate(keys * 2)]
        copies = []
        for n in range(3):
            await asyncio.sleep(0.3)
            copy = tmp_path / f"busy{n}.db"
            code, out, err = await run([*CHECKOUT, "backup", str(copy), "--db", str(db)])
            assert code == 0, err
            assert "integrity ok" in out and not copy.with_name(copy.name + "-wal").exists()
            assert stat.S_IMODE(copy.stat().st_mode) == 0o600
            copies.append(copy)
        stop.set()
        await asyncio.gather(*workers)
        await asyncio.sleep(0.6)  # the writer's last group commit
        final = tmp_path / "final.db"
        code, _, err = await run([*CHECKOUT, "backup", str(final), "--db", str(db)])
        assert code == 0, err
        status, live = await gw.call("GET", "/x-dna?size=100")
        assert status == 200
    finally:
        await gw.stop()

    counts = [usage_rows(c) for c in copies]
    assert 0 < counts[0] < counts[-1] < usage_rows(final)  # taken while it grew
    for copy in copies:
        snapshot = audit(copy)
        restored = tmp_path / ("restored-" + copy.name)
        shutil.copy(copy, restored)
        assert await restored_balances(aiohttp_server, restored) == snapshot
    expected = {u["ID"]: ledger.to_n(u["Balance"], u["Rates"]) for u in live}
    assert audit(final) == expected
    assert await restored_balances(aiohttp_server, final) == expected
