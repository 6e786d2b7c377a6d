"""The app boots on a fresh SQLite file, creates root, and answers errors in the one format."""

from xaiproxy import credentials


async def test_health_and_ready(api):
    r = await api.get("/healthz", key="")
    assert r.status == 200 and r.body == {"status": "ok"}
    r = await api.get("/readyz", key="")
    assert r.status == 200


async def test_unknown_path_is_error_format(api):
    r = await api.get("/nope")
    assert r.status == 404
    assert r.body["error"]["type"] == "not_found_error"
    assert set(r.body["error"]) == {"message", "type", "code"}


async def test_root_bootstrapped_with_hashed_key(api, root_key):
    root = api.gw.state.root
    assert (root.id, root.name, root.dna, root.level, root.owner) == (1, "root", ".1.", 0, True)
    row = await api.gw.store.fetchone("SELECT key_hash, key_prefix FROM accounts WHERE id = 1")
    assert row["key_hash"] == credentials.hash_key(root_key)
    assert root_key not in row["key_prefix"]


async def test_generated_keys_have_the_documented_shape():
    keys = {credentials.generate_key() for _ in range(200)}
    assert len(keys) == 200
    assert all(len(k) == 51 and k.startswith("sk-Xvs") for k in keys)


async def test_ids_of_deleted_accounts_and_keys_are_never_reused(aiohttp_server, tmp_path):
    from tests.helpers import start_gateway

    db = tmp_path / "ids.db"
    first = await start_gateway(aiohttp_server, db)
    r = await first.post(
        "/x-users", {"Name": "gone-soon", "Email": "g@example.com", "CreditGranted": 5}
    )
    gone = r.body["User"]["ID"]
    key = (
        await first.post(
            "/x-keys",
            {"SecretKey": "sk-" + "q" * 30, "Level": 1, "Provider": "https://api.openai.com"},
        )
    ).body["Key"]["ID"]
    await first.gw.store.write(
        [
            (
                "INSERT INTO usage (ts, account_id, owner_id, dna, model, key_id) VALUES (1, ?, 1, '.1.', 'm', ?)",
                (gone, key),
            )
        ]
    )
    assert (await first.delete(f"/x-users/{gone}")).status == 200
    assert (await first.delete(f"/x-keys/{key}")).status == 200
    await first.close()
    second = await start_gateway(aiohttp_server, db)
    try:
        r = await second.post(
            "/x-users", {"Name": "newcomer", "Email": "n@example.com", "CreditGranted": 5}
        )
        assert r.body["User"]["ID"] > gone
        r = await second.post(
            "/x-keys",
            {"SecretKey": "sk-" + "w" * 30, "Level": 1, "Provider": "https://api.openai.com"},
        )
        assert r.body["Key"]["ID"] > key
    finally:
        await second.close()


def test_a_malformed_root_key_stops_the_start_with_one_line(tmp_path):
    import os
    import subprocess
    import sys

    for bad in ("letmein", "sk-Xvs" + "a" * 45 + "\n", "sk-Xvs" + "a" * 44 + "!"):
        env = {**os.environ, "XAI_ROOT_KEY": bad, "XAI_DB": str(tmp_path / "x.db")}
        done = subprocess.run(
            [sys.executable, "-m", "xaiproxy", "serve", "--port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert "XAI_ROOT_KEY" in line and bad.strip() not in line
        assert not (tmp_path / "x.db").exists()
