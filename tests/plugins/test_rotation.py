"""POST /x-self and /x-root: confirm strings, the old key dies at once, no key in the op log."""

from datetime import UTC, datetime

from tests.plugins.test_users import new_user
from xaiproxy import credentials


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


async def test_rotate_self(api):
    uid, old = await new_user(api, "rotator", 30)
    r = await api.post("/x-self", {"confirm": "2000-01-01-ROTATE-SELF"}, key=old)
    assert r.status == 400 and today() in r.body["error"]["message"]
    assert (await api.get("/x-users", key=old)).status == 200
    r = await api.post("/x-self", {"confirm": f"{today()}-ROTATE-SELF"}, key=old)
    assert r.status == 200, r.body
    assert r.body["success"] is True and r.body["message"] == "Self key rotated successfully"
    rot = r.body["rotate"]
    assert (rot["action"], rot["id"], rot["name"]) == ("rotate_self", uid, "rotator")
    assert rot["timestamp"].endswith("Z") and rot["timestamp"].startswith(today())
    new = rot["key"]
    assert len(new) == 51 and new.startswith("sk-Xvs") and new != old
    assert (await api.get("/x-users", key=old)).status == 401
    assert (await api.get("/x-users", key=new)).status == 200
    row = await api.gw.store.fetchone("SELECT key_hash FROM accounts WHERE id = ?", (uid,))
    assert row[0] == credentials.hash_key(new)
    log = await api.gw.store.fetchone("SELECT * FROM op_logs WHERE action = 'rotate_self'")
    assert log["target_id"] == uid and new not in log["details"] and old not in log["details"]


async def test_rotate_self_refuses_other_fields(api):
    r = await api.post("/x-self", {"confirm": f"{today()}-ROTATE-SELF", "key": "x"})
    assert r.status == 400
    r = await api.post("/x-self", {})
    assert r.status == 400 and "confirm" in r.body["error"]["message"]


async def test_rotate_root_is_root_only(api):
    uid, key = await new_user(api, "plain-acc", 30)
    r = await api.post("/x-root", {"confirm": f"{today()}-ROTATE-ROOT"}, key=key)
    assert r.status == 403 and r.body["error"]["code"] == "permission_denied"
    assert (await api.get("/x-users")).status == 200  # root's key unchanged


async def test_rotate_root_sets_a_given_key_on_any_account(api):
    pid, pkey = await new_user(api, "parent-acc", 30)
    kid, kkey = await new_user(api, "deep-kid", 5, key=pkey)
    chosen = "sk-Xvs" + "a1_-" * 11 + "z"
    confirm = f"{today()}-ROTATE-ROOT"
    r = await api.post("/x-root", {"name": "deep-kid", "key": chosen, "confirm": confirm})
    assert r.status == 200, r.body
    assert r.body["rotate"] | {"timestamp": ""} == {
        "action": "rotate_root",
        "id": kid,
        "name": "deep-kid",
        "key": chosen,
        "timestamp": "",
    }
    assert (await api.get("/x-users", key=kkey)).status == 401
    assert (await api.get("/x-users", key=chosen)).status == 200
    # the key must look right and be unique
    for bad in ("sk-Xvs-short", chosen + "x", "sk-Abc" + "a" * 45, "sk-Xvs" + "é" * 45):
        r = await api.post("/x-root", {"name": "parent-acc", "key": bad, "confirm": confirm})
        assert r.status == 400 and r.body["error"]["code"] == "invalid_key"
    r = await api.post("/x-root", {"name": "parent-acc", "key": chosen, "confirm": confirm})
    assert r.status == 409
    r = await api.post("/x-root", {"name": "no-such-acc", "confirm": confirm})
    assert r.status == 404
    r = await api.post("/x-root", {"name": "parent-acc", "confirm": f"{today()}-ROTATE-SELF"})
    assert r.status == 400
    assert (await api.get("/x-users", key=pkey)).status == 200
    log = await api.gw.store.fetchall("SELECT * FROM op_logs WHERE action = 'rotate_root'")
    assert len(log) == 1 and chosen not in log[0]["details"]


async def test_rotate_root_defaults_to_root(api):
    r = await api.post("/x-root", {"confirm": f"{today()}-ROTATE-ROOT"})
    assert r.status == 200 and r.body["rotate"]["id"] == 1
    assert (await api.get("/x-users")).status == 401  # api.root is the old key
    assert (await api.get("/x-users", key=r.body["rotate"]["key"])).status == 200
