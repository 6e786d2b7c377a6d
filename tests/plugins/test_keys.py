"""/x-keys and /x-gkey: add, list, filter, update, delete; secrets masked; LEVEL_MAPPER extended."""

import sqlite3

import pytest

from tests.helpers import start_gateway

OPENAI_SECRET = "sk-proj-" + "a" * 40
ANTHROPIC_SECRET = "sk-ant-api03-" + "b" * 40


async def add(api, secret=OPENAI_SECRET, level=1, provider="https://api.openai.com", **extra):
    return await api.post(
        "/x-keys", {"SecretKey": secret, "Level": level, "Provider": provider, **extra}
    )


async def test_gkey_returns_a_fresh_unstored_key(api):
    a, b = await api.get("/x-gkey"), await api.get("/x-gkey")
    assert a.status == 200 and a.body["key"].startswith("sk-Xvs") and len(a.body["key"]) == 51
    assert a.body["key"] != b.body["key"]
    assert a.body["key"] not in [acc.key_hash for acc in api.gw.state.accounts.values()]


async def test_add_key_masks_secret_and_logs(api):
    r = await add(api, Name="main")
    assert r.status == 201, r.body
    key = r.body["Key"]
    assert key["Name"] == "main" and key["Level"] == 1 and key["Status"] is True
    assert OPENAI_SECRET not in r.raw.decode()
    assert key["SecretKey"].startswith("sk-pro") and "..." in key["SecretKey"]
    listed = await api.get("/x-keys")
    assert listed.status == 200 and OPENAI_SECRET not in listed.raw.decode()
    assert listed.headers["X-Total-Count"] == "1"
    await api.gw.store.flush()
    logs = await api.gw.store.fetchall("SELECT action, details FROM op_logs")
    assert [r["action"] for r in logs] == ["add_key"]
    assert OPENAI_SECRET not in logs[0]["details"]


async def test_secret_sealed_at_rest_when_secret_key_set(make_gateway):
    api = await make_gateway(secret_key="correct horse battery staple")
    await add(api)
    await api.gw.store.flush()
    row = await api.gw.store.fetchone("SELECT secret FROM provider_keys")
    assert row["secret"].startswith("enc:") and OPENAI_SECRET not in row["secret"]
    assert next(iter(api.gw.state.keys.values())).secret == OPENAI_SECRET


async def test_sealed_keys_survive_restart(aiohttp_server, tmp_path):
    db = tmp_path / "seal.db"
    first = await start_gateway(aiohttp_server, db, secret_key="s3cret")
    await add(first, secret=ANTHROPIC_SECRET, provider="https://api.anthropic.com", level=2)
    await first.close()
    second = await start_gateway(aiohttp_server, db, secret_key="s3cret")
    try:
        (key,) = second.gw.state.keys.values()
        assert key.secret == ANTHROPIC_SECRET and key.level == 2
    finally:
        await second.close()


@pytest.mark.parametrize(
    "body, code",
    [
        (
            {"SecretKey": "short", "Level": 1, "Provider": "https://api.openai.com"},
            "invalid_request",
        ),
        (
            {"SecretKey": OPENAI_SECRET, "Level": 1, "Provider": "ftp://x.example.com"},
            "invalid_provider",
        ),
        (
            {"SecretKey": OPENAI_SECRET, "Level": 1, "Provider": "https://u:p@api.openai.com"},
            "invalid_provider",
        ),
        (
            {"SecretKey": OPENAI_SECRET, "Level": "1", "Provider": "https://api.openai.com"},
            "invalid_request",
        ),
        ({"SecretKey": OPENAI_SECRET, "Level": 1}, "invalid_request"),
        (
            {"SecretKey": OPENAI_SECRET, "Level": 1, "Provider": "https://a.b", "Extra": 1},
            "invalid_request",
        ),
        (
            {"SecretKey": OPENAI_SECRET, "Level": 100, "Provider": "https://api.openai.com"},
            "invalid_request",
        ),
    ],
)
async def test_add_key_rejects_bad_input_without_state_change(api, body, code):
    r = await api.post("/x-keys", body)
    assert r.status == 400 and r.error_code == code, r.body
    assert "short" not in r.body["error"]["message"]  # a bad secret is never echoed
    assert api.gw.state.keys == {}


async def test_invalid_json_is_400(api):
    r = await api.request(
        "POST", "/x-keys", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert r.status == 400 and r.error_code == "invalid_json"


async def test_list_filters_and_paths(api):
    await add(api, level=1)
    await add(api, secret=ANTHROPIC_SECRET, level=2, provider="https://api.anthropic.com")
    await add(api, secret="sk-third-" + "c" * 30, level=2, provider="https://api.openai.com")
    assert len((await api.get("/x-keys", params={"level": "2"})).body) == 2
    assert len((await api.get("/x-keys/L2")).body) == 2
    by_host = await api.get("/x-keys/api.anthropic.com")
    assert [k["Provider"] for k in by_host.body] == ["https://api.anthropic.com"]
    assert len((await api.get("/x-keys", params={"provider": "https://api.openai.com"})).body) == 2
    paged = await api.get("/x-keys", params={"page": "2", "size": "2"})
    assert len(paged.body) == 1 and paged.headers["X-Total-Pages"] == "2"
    one = await api.get("/x-keys/1")
    assert one.body["ID"] == 1
    assert (await api.get("/x-keys/99")).status == 404
    assert (await api.get("/x-keys", params={"size": "0"})).status == 400


async def test_update_and_delete(api):
    key_id = (await add(api)).body["Key"]["ID"]
    key = api.gw.state.keys[key_id]
    key.sleep_until, key.sleep_reason = 2e9, "auth_failed"
    r = await api.put(f"/x-keys/{key_id}", {"Level": 3, "Name": "renamed", "Status": True})
    assert r.status == 200 and r.body["Key"]["Level"] == 3 and r.body["Key"]["Sleeping"] is False
    assert api.gw.state.keys[key_id].level == 3
    assert (await api.put(f"/x-keys/{key_id}", {})).status == 400
    assert (await api.put("/x-keys/77", {"Level": 1})).status == 404
    r = await api.delete(f"/x-keys/{key_id}")
    assert r.status == 200 and key_id not in api.gw.state.keys
    assert (await api.delete(f"/x-keys/{key_id}")).status == 404
    await api.gw.store.flush()
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM provider_keys") == 0


async def test_level_mapper_extended_once_per_family(api):
    r = await add(api, secret=ANTHROPIC_SECRET, level=2, provider="https://api.anthropic.com")
    assert r.body["LevelMapper"] == {"claude*": 2}
    cfg = api.gw.config(1)
    assert cfg.level_of("claude-haiku-4-5") == 2 and cfg.level_of("gpt-4o") == 1
    again = await add(
        api, secret="sk-ant-other-" + "d" * 30, level=3, provider="https://api.anthropic.com"
    )
    assert again.body["LevelMapper"] == {}
    assert api.gw.config(1).level_of("claude-3") == 2


async def test_keys_need_auth(api):
    r = await api.get("/x-keys", key="sk-Xvs" + "z" * 45)
    assert r.status == 401 and r.error_code == "invalid_api_key"
    r = await api.get("/x-keys", key="")
    assert r.status == 401


async def test_db_file_holds_no_plain_client_key(api, tmp_path):
    await api.gw.store.flush()
    for path in tmp_path.glob("*.db"):
        con = sqlite3.connect(path)
        dump = "\n".join(con.iterdump())
        con.close()
        assert api.root not in dump


@pytest.mark.parametrize(
    "provider",
    [
        "http://127.0.0.1:9",
        "http://localhost:9",
        "https://10.1.2.3",
        "http://[::1]:9",
        "http://169.254.169.254",
        "http://100.64.0.1",
        "http://[::ffff:127.0.0.1]:9",
    ],
)
async def test_tenant_cannot_point_a_key_at_private_addresses(make_gateway, provider):
    api = await make_gateway(allow_private_providers=False)
    r = await api.post(
        "/x-users", {"Name": "tenant", "Email": "t@example.com", "CreditGranted": 50}
    )
    tenant_key = r.body["User"]["SecretKey"]
    assert (await api.put("/x-users/tenant", {"Owner": True})).status == 200
    body = {"SecretKey": OPENAI_SECRET, "Level": 1, "Provider": provider}
    r = await api.post("/x-keys", body, key=tenant_key)
    assert r.status == 403 and r.error_code == "provider_not_allowed"
    assert api.gw.state.keys == {}
    # root may, and so may anyone when the operator allows private providers
    assert (await api.post("/x-keys", body)).status == 201


async def test_config_headers_are_validated_masked_and_sealed(make_gateway):
    api = await make_gateway(secret_key="correct horse battery staple")
    for config in (
        {"headers": {"X-Evil": "a\r\nInjected: 1"}},
        {"headers": {"X-Evil": "a\nb"}},
        {"headers": {"Bad Name": "x"}},
        {"headers": {"X-Ok": 5}},
        {"headers": {"Host": "elsewhere"}},
        {"auth": "telepathy"},
    ):
        r = await add(api, Config=config)
        assert r.status == 400 and r.error_code == "invalid_config", (config, r.body)
    assert api.gw.state.keys == {}
    azure = "azure-secret-" + "z" * 30
    config = {"auth": "bearer", "headers": {"api-key": azure, "OpenAI-Project": "proj_123456789"}}
    r = await add(api, Config=config)
    assert r.status == 201 and azure not in r.raw.decode()
    kid = r.body["Key"]["ID"]
    for reply in (
        await api.get("/x-keys"),
        await api.get(f"/x-keys/{kid}"),
        await api.get("/x-conf"),
    ):
        assert azure not in reply.raw.decode() and "proj_123456789" not in reply.raw.decode()
    await api.gw.store.flush()
    row = await api.gw.store.fetchone("SELECT config FROM provider_keys")
    assert azure not in row["config"] and "enc:v2:" in row["config"]
    # A Config read back (masked) and sent again keeps the real values.
    shown = (await api.get(f"/x-keys/{kid}")).body["Config"]
    assert (await api.put(f"/x-keys/{kid}", {"Config": shown})).status == 200
    assert api.gw.state.keys[kid].config["headers"]["api-key"] == azure


async def test_secret_with_a_trailing_newline_is_refused(api):
    r = await add(api, secret=OPENAI_SECRET + "\n")
    assert r.status == 400 and api.gw.state.keys == {}


async def test_old_sealed_keys_are_read_and_sealed_again(aiohttp_server, tmp_path):
    import base64
    import hashlib

    from cryptography.fernet import Fernet

    db = tmp_path / "old.db"
    first = await start_gateway(aiohttp_server, db)
    await add(first)
    await first.gw.store.flush()
    # What the first format stored: Fernet keyed by a bare SHA-256 of the passphrase.
    old = Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"s3cret").digest()))
    sealed = "enc:" + old.encrypt(OPENAI_SECRET.encode()).decode()
    await first.gw.store.write([("UPDATE provider_keys SET secret = ?", (sealed,))])
    await first.close()
    second = await start_gateway(aiohttp_server, db, secret_key="s3cret")
    try:
        (key,) = second.gw.state.keys.values()
        assert key.secret == OPENAI_SECRET
        stored = await second.gw.store.scalar("SELECT secret FROM provider_keys")
        assert stored.startswith("enc:v2:") and OPENAI_SECRET not in stored
        salt = await second.gw.store.scalar("SELECT value FROM meta WHERE key = 'box_salt'")
        assert len(bytes.fromhex(salt)) == 16
    finally:
        await second.close()


async def test_database_files_are_private(api, tmp_path):
    import os
    import stat

    await add(api)
    await api.gw.store.flush()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("gw0.db")]
    assert {p.name for p in files} >= {"gw0.db", "gw0.db-wal", "gw0.db-shm"}
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


async def test_update_racing_a_delete_never_brings_the_key_back(make_gateway):
    import asyncio
    import time

    api = await make_gateway(allow_private_providers=False)
    r = await api.post(
        "/x-users", {"Name": "tenant", "Email": "t@example.com", "CreditGranted": 50}
    )
    tenant = r.body["User"]["SecretKey"]
    assert (await api.put("/x-users/tenant", {"Owner": True})).status == 200
    body = {"SecretKey": OPENAI_SECRET, "Level": 1, "Provider": "https://8.8.8.8"}
    kid = (await api.post("/x-keys", body, key=tenant)).body["Key"]["ID"]
    # The update resolves its provider host in the loop's thread pool (134744072 is
    # 8.8.8.8 as one number); with the pool busy, the delete lands while it waits.
    loop = asyncio.get_running_loop()
    busy = [loop.run_in_executor(None, time.sleep, 0.05) for _ in range(64)]
    update = asyncio.create_task(
        api.put(f"/x-keys/{kid}", {"Provider": "https://134744072"}, key=tenant)
    )
    await asyncio.sleep(0.05)
    assert (await api.delete(f"/x-keys/{kid}", key=tenant)).status == 200
    assert (await update).status == 404
    await asyncio.gather(*busy)
    await api.gw.store.flush()
    assert kid not in api.gw.state.keys
    assert not await api.gw.store.scalar("SELECT 1 FROM provider_keys WHERE id = ?", (kid,))
