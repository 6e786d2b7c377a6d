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
