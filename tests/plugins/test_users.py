"""/x-users and /x-dna: the seed's shapes, every field rule, subtree scoping, lists and filters."""

import pytest

from xaiproxy import credentials

SEED = {
    "Name": "prod-account",
    "Email": "prod@example.com",
    "CreditGranted": 500,
    "Alias": "Production Environment",
    "RPM": 100,
    "TPM": 200000,
}


async def new_user(api, name: str, credit: float = 100, key: str | None = None, **fields):
    """Create a subaccount (as `key`, default root); return (id, secret key)."""
    body = {"Name": name, "Email": f"{name}@example.com", "CreditGranted": credit, **fields}
    r = await api.post("/x-users", body, key=key)
    assert r.status == 200, r.body
    return r.body["User"]["ID"], r.body["User"]["SecretKey"]


async def test_create_answers_like_the_seed(api):
    r = await api.post("/x-users", SEED)
    assert r.status == 200, r.body
    assert r.body["Action"] == "add"
    user = r.body["User"]
    assert isinstance(user["ID"], int) and len(user["SecretKey"]) == 51
    assert user["SecretKey"].startswith("sk-Xvs")
    up = user["Updates"]
    assert (up["Name"], up["Email"]) == ("prod-account", "prod@example.com")
    assert (up["CreditGranted"], up["Balance"]) == (500, 500)
    assert (up["HardLimit"], up["SoftLimit"]) == (5000, 4000)
    assert (up["Alias"], up["RPM"], up["TPM"]) == ("Production Environment", 100, 200000)
    assert r.body["Parent"] == {"ID": 1, "Balance": None, "CreditBalance": []}
    # the new key works at once, and only its hash is stored
    assert (await api.get("/x-users", key=user["SecretKey"])).status == 200
    row = await api.gw.store.fetchone("SELECT * FROM accounts WHERE id = ?", (user["ID"],))
    assert row["key_hash"] == credentials.hash_key(user["SecretKey"])
    assert user["SecretKey"] not in str(dict(row))
    log = await api.gw.store.fetchone("SELECT * FROM op_logs WHERE action = 'add_user'")
    assert log["target_id"] == user["ID"] and user["SecretKey"] not in log["details"]


async def test_defaults(api):
    uid, _ = await new_user(api, "plain-user", 2)
    acc = api.gw.state.accounts[uid]
    assert (acc.alias, acc.rates, acc.factor, acc.hard_limit, acc.soft_limit) == (
        "plain-user",
        1.0,
        1.0,
        20,
        16,
    )
    assert (acc.dna, acc.level, acc.parent_id, acc.status) == (f".1.{uid}.", 1, 1, True)


async def test_explicit_hard_limit_derives_soft(api):
    uid, _ = await new_user(api, "limited", 10, HardLimit=1000)
    acc = api.gw.state.accounts[uid]
    assert (acc.hard_limit, acc.soft_limit) == (1000, 800)


BAD_CREATE = [
    ({"Name": "abc"}, 400),
    ({"Name": "12345"}, 400),
    ({"Name": "bad name"}, 400),
    ({"Name": "L123"}, 400),
    ({"Name": "F1.5x"[:4]}, 400),
    ({"Name": "a" * 64}, 400),
    ({"Name": "naïve-user"}, 400),
    ({"Email": "not-an-email"}, 400),
    ({"Email": "a@b"}, 400),
    ({"BillingEmail": "nope"}, 400),
    ({"CreditGranted": 1.5}, 400),
    ({"CreditGranted": -5}, 400),
    ({"Rates": 0}, 400),
    ({"Days": 366}, 400),
    ({"Days": -1}, 400),
    ({"HardLimit": 10, "SoftLimit": 20}, 400),
    ({"RPM": -1}, 400),
    ({"RPM": 1.5}, 400),
    ({"AllowIPs": "10.0.0.0/33"}, 400),
    ({"AllowIPs": "not-an-ip"}, 400),
    ({"Resources": "/v1/../x-users"}, 400),
    ({"ModelLimits": {"gpt-4": {"rpm": -1}}}, 400),
    ({"ModelLimits": {"gpt-4": {"bogus": 1}}}, 400),
    ({"Alias": "a\x00b"}, 400),
    ({"Unknown": 1}, 400),
    ({"Status": "yes"}, 400),
    ({"Gear": -1}, 400),
]


@pytest.mark.parametrize(("change", "status"), BAD_CREATE)
async def test_create_refuses(api, change, status):
    body = {"Name": "good-name", "Email": "good@example.com", "CreditGranted": 10} | change
    r = await api.post("/x-users", body)
    assert r.status == status, (change, r.body)
    assert set(r.body["error"]) == {"message", "type", "code"}
    assert len(api.gw.state.accounts) == 1


async def test_required_fields(api):
    for missing in ("Name", "Email", "CreditGranted"):
        body = {"Name": "good-name", "Email": "good@example.com", "CreditGranted": 10}
        del body[missing]
        r = await api.post("/x-users", body)
        assert r.status == 400 and missing in r.body["error"]["message"]


async def test_uniqueness_is_case_insensitive(api):
    await new_user(api, "taken-name")
    r = await api.post(
        "/x-users", {"Name": "TAKEN-name", "Email": "x1@example.com", "CreditGranted": 5}
    )
    assert r.status == 409 and r.body["error"]["code"] == "already_exists"
    r = await api.post(
        "/x-users", {"Name": "other-name", "Email": "Taken-Name@Example.com", "CreditGranted": 5}
    )
    assert r.status == 409


async def test_owner_min_balance_setting(api):
    await api.gw.save_config(1, {"USER_MIN_BALANCE": 10.0})
    r = await api.post("/x-users", {"Name": "tiny", "Email": "t@example.com", "CreditGranted": 5})
    assert r.status == 400 and "at least 10" in r.body["error"]["message"]
    await new_user(api, "enough", 10)


async def test_poor_parent_gets_403_and_nothing_moves(api):
    pid, pkey = await new_user(api, "parent-acc", 30)
    r = await api.post(
        "/x-users", {"Name": "kid-acc", "Email": "k@example.com", "CreditGranted": 100}, key=pkey
    )
    assert r.status == 403 and r.body["error"]["code"] == "insufficient_balance"
    assert api.gw.ledger.balance(api.gw.state.accounts[pid]) == 30
    assert "kid-acc" not in api.gw.state.by_name
    assert await api.gw.store.scalar("SELECT COUNT(*) FROM accounts") == 2


async def test_api_balance_needed_for_changes(api):
    pid, pkey = await new_user(api, "lowbal-acc", 10)
    r = await api.post(
        "/x-users", {"Name": "kid-acc", "Email": "k@example.com", "CreditGranted": 2}, key=pkey
    )
    assert r.status == 403 and r.body["error"]["code"] == "insufficient_balance"
    assert "20" in r.body["error"]["message"]
    # reading needs nothing
    assert (await api.get("/x-users", key=pkey)).status == 200


async def test_child_limit(api):
    pid, pkey = await new_user(api, "parent-acc", 100, ChildLimit=1)
    await new_user(api, "kid-one", 5, key=pkey)
    r = await api.post(
        "/x-users", {"Name": "kid-two", "Email": "k2@example.com", "CreditGranted": 5}, key=pkey
    )
    assert r.status == 403 and r.body["error"]["code"] == "child_limit_reached"
    r = await api.put(f"/x-users/{pid}", {"ChildLimit": 2})
    assert r.status == 200
    await new_user(api, "kid-two", 5, key=pkey)


async def test_rates_and_limits_bounded_by_parent(api):
    pid, pkey = await new_user(api, "parent-acc", 100, Rates=1.5, RPM=60, TPD=1000)
    r = await api.post(
        "/x-users",
        {"Name": "kid-acc", "Email": "k@example.com", "CreditGranted": 5, "Rates": 1.2},
        key=pkey,
    )
    assert r.status == 400 and "Rates" in r.body["error"]["message"]
    r = await api.post(
        "/x-users",
        {"Name": "kid-acc", "Email": "k@example.com", "CreditGranted": 5, "RPM": 61},
        key=pkey,
    )
    assert r.status == 400 and "RPM" in r.body["error"]["message"]
    kid, _ = await new_user(api, "kid-acc", 5, key=pkey, RPM=60, TPM=999999)
    acc = api.gw.state.accounts[kid]
    assert (acc.rates, acc.rpm, acc.tpm) == (1.5, 60, 999999)  # Rates default = parent's
    r = await api.put(f"/x-users/{kid}", {"TPD": 1001}, key=pkey)
    assert r.status == 400


async def test_factor_is_owner_only(api):
    pid, pkey = await new_user(api, "parent-acc", 100)
    r = await api.post(
        "/x-users",
        {"Name": "kid-acc", "Email": "k@example.com", "CreditGranted": 5, "Factor": 2},
        key=pkey,
    )
    assert r.status == 403 and r.body["error"]["code"] == "permission_denied"
    kid, _ = await new_user(api, "kid-acc", 5, key=pkey)
    assert (await api.put(f"/x-users/{kid}", {"Factor": 2}, key=pkey)).status == 403
    r = await api.put(f"/x-users/{kid}", {"Factor": 2})
    assert r.status == 200 and api.gw.state.accounts[kid].factor == 2


async def test_whitelist_edits(api):
    uid, _ = await new_user(api, "wl-user")
    acc = api.gw.state.accounts[uid]

    async def edit(field, value):
        r = await api.put(f"/x-users/{uid}", {field: value})
        assert r.status == 200, r.body
        return r.body["User"]["Updates"][field]

    assert await edit("AllowModels", "gpt-4* claude-*") == "gpt-4* claude-*"
    assert acc.model_match("gpt-4o") and not acc.model_match("o1")
    assert await edit("AllowModels", "-gpt-4*") == "claude-*"
    assert not acc.model_match("gpt-4o")
    assert await edit("AllowModels", "*") == ""
    assert acc.model_match is None
    assert await edit("AllowModels", "-*") == "-*"
    assert not acc.model_match("claude-3")
    assert await edit("AllowIPs", "192.168.1.0/24, 10.0.0.5") == "192.168.1.0/24 10.0.0.5"
    assert len(acc.ip_nets) == 2
    assert await edit("Resources", ["/v1/chat/completions"]) == "/v1/chat/completions"
    row = await api.gw.store.fetchone(
        "SELECT allow_ips, resources FROM accounts WHERE id = ?", (uid,)
    )
    assert tuple(row) == ("192.168.1.0/24 10.0.0.5", "/v1/chat/completions")


async def test_model_limits_merge(api):
    uid, _ = await new_user(api, "ml-user")
    acc = api.gw.state.accounts[uid]
    r = await api.put(f"/x-users/{uid}", {"ModelLimits": {"gpt-4": {"rpm": 30, "tpm": 90000}}})
    assert r.status == 200
    r = await api.put(f"/x-users/{uid}", {"ModelLimits": '{"o1": {"rpm": 5}}', "RPH": 10})
    assert r.body["User"]["Updates"]["ModelLimits"] == {
        "gpt-4": {"rpm": 30, "tpm": 90000},
        "o1": {"rpm": 5},
    }
    assert acc.rph == 10  # the data plane rebuilds the buckets from the new values
    r = await api.put(f"/x-users/{uid}", {"ModelLimits": "*"})
    assert acc.model_limits == {}


async def test_plain_fields_update(api):
    uid, key = await new_user(api, "fields-user")
    body = {
        "Alias": "Shown Name",
        "BillingEmail": "bills@example.com",
        "Gear": 2,
        "Role": 3,
        "Tier": 4,
        "HardLimit": 50,
        "SoftLimit": 10,
    }
    r = await api.put(f"/x-users/{uid}", body)
    assert r.status == 200 and r.body["Action"] == "update"
    assert r.body["User"]["Updates"] == body | {"AutoQuota": False}  # set by hand now
    got = (await api.get(f"/x-users/{uid}")).body
    assert {k: got[k] for k in body} == body
    log = await api.gw.store.fetchone("SELECT * FROM op_logs WHERE action = 'update_user'")
    assert log["target_id"] == uid and "Gear" in log["details"]
    r = await api.put(f"/x-users/{uid}", {})
    assert r.status == 400


async def test_rename_and_lookup_by_any_identifier(api):
    uid, _ = await new_user(api, "old-name")
    await new_user(api, "other-one")
    assert (await api.put(f"/x-users/{uid}", {"Name": "Other-One"})).status == 409
    r = await api.put("/x-users/old-name", {"Name": "new-name", "Email": "new@example.com"})
    assert r.status == 200
    assert (await api.get("/x-users/old-name")).status == 404
    for ident in (str(uid), "new-name", "NEW@example.com"):
        r = await api.get(f"/x-users/{ident}")
        assert r.status == 200 and r.body["ID"] == uid
    row = await api.gw.store.fetchone("SELECT name, email FROM accounts WHERE id = ?", (uid,))
    assert tuple(row) == ("new-name", "new@example.com")


async def test_disable_stops_the_subtree(api):
    pid, pkey = await new_user(api, "parent-acc", 100)
    kid, kkey = await new_user(api, "kid-acc", 5, key=pkey)
    assert (await api.get("/x-users", key=kkey)).status == 200
    assert (await api.put(f"/x-users/{pid}", {"Status": False})).status == 200
    for key in (pkey, kkey):
        r = await api.get("/x-users", key=key)
        assert r.status == 403 and r.body["error"]["code"] == "account_disabled"
    assert (await api.put(f"/x-users/{pid}", {"Status": True})).status == 200
    assert (await api.get("/x-users", key=kkey)).status == 200


async def test_subtree_scoping(api):
    a, akey = await new_user(api, "branch-a", 100)
    b, _ = await new_user(api, "branch-b", 100)
    a1, _ = await new_user(api, "branch-a1", 5, key=akey)
    for ident in (str(b), "branch-b", "branch-b@example.com", "1", "root", str(a)):
        assert (await api.get(f"/x-users/{ident}", key=akey)).status == 404
        assert (await api.get(f"/x-dna/{ident}", key=akey)).status == 404
        assert (await api.put(f"/x-users/{ident}", {"Gear": 1}, key=akey)).status == 404
        assert (await api.delete(f"/x-users/{ident}", key=akey)).status == 404
    r = await api.get(f"/x-users/{a1}", key=akey)
    assert r.status == 200 and r.body["ID"] == a1
    ids = [u["ID"] for u in (await api.get("/x-dna", key=akey)).body]
    assert ids == [a1]
    assert (await api.get(f"/x-users?id={b}", key=akey)).body == []


async def test_owner_flag_makes_a_tenant(api):
    t, tkey = await new_user(api, "tenant-acc", 100)
    kid, kkey = await new_user(api, "tenant-kid", 5, key=tkey)
    assert (await api.put(f"/x-users/{kid}", {"Owner": True}, key=tkey)).status == 403
    assert (await api.put(f"/x-users/{kid}", {"Owner": True})).status == 403  # not root's child
    r = await api.put(f"/x-users/{t}", {"Owner": True})
    assert r.status == 200
    state = api.gw.state
    assert state.accounts[t].owner_acc is state.accounts[t]
    assert state.accounts[kid].owner_acc is state.accounts[t]
    row = await api.gw.store.fetchone("SELECT owner FROM accounts WHERE id = ?", (t,))
    assert row[0] == 1
    # the tenant may now set Factor on its own subtree
    assert (await api.put(f"/x-users/{kid}", {"Factor": 1.5}, key=tkey)).status == 200


async def test_only_owners_reach_owner_endpoints(api):
    if not any(s.path == "/x-config" for s in api.gw.routes):
        pytest.skip("the config plugin is not loaded")
    t, tkey = await new_user(api, "tenant-acc", 100, Owner=True)
    kid, kkey = await new_user(api, "plain-kid", 50, key=tkey)
    for path in ("/x-config", "/x-keys", "/x-conf"):
        assert (await api.get(path, key=tkey)).status == 200, path
        r = await api.get(path, key=kkey)
        assert r.status == 403 and r.body["error"]["code"] == "permission_denied", path


async def tree(api):
    """root -> a (Gear 1), b (Gear 2, Factor 1.5); a -> a1 (Role 3), a2; a1 -> a11 (Tier 4)."""
    a, akey = await new_user(api, "tree-a", 200, Gear=1)
    b, _ = await new_user(api, "tree-b", 50, Gear=2, Factor=1.5)
    a1, a1key = await new_user(api, "tree-a1", 50, key=akey, Role=3)
    a2, _ = await new_user(api, "tree-a2", 20, key=akey)
    a11, _ = await new_user(api, "tree-a11", 20, key=a1key, Tier=4)
    return a, b, a1, a2, a11, akey


async def test_lists_fields_and_paging(api):
    a, b, a1, a2, a11, akey = await tree(api)
    r = await api.get("/x-users")
    assert [u["ID"] for u in r.body] == [a, b]
    assert r.headers["X-Total-Count"] == "2" and r.headers["X-Total-Pages"] == "1"
    user = r.body[0]
    for field in ("Name", "Email", "Alias", "BillingEmail", "ParentID", "DNA", "Level", "Status"):
        assert field in user
    for field in ("Rates", "Factor", "HardLimit", "SoftLimit", "RPM", "TPD", "AllowIPs"):
        assert field in user
    for field in ("ModelLimits", "ChildLimit", "Gear", "Role", "Tier", "Owner", "MonthSpend"):
        assert field in user
    assert "SecretKey" not in user and user["PartialKey"].endswith("...")
    assert user["Balance"] == 130 and user["CreditBalance"][0]["Remaining"] == 130
    assert user["CreditBalance"][0]["Amount"] == 200
    r = await api.get("/x-dna", params={"size": "2", "page": "2"})
    assert [u["ID"] for u in r.body] == [a1, a2]
    headers = {k: r.headers[k] for k in ("X-Total-Count", "X-Page", "X-Per-Page", "X-Total-Pages")}
    assert headers == {
        "X-Total-Count": "5",
        "X-Page": "2",
        "X-Per-Page": "2",
        "X-Total-Pages": "3",
    }
    for bad in ({"size": "5000"}, {"page": "0"}, {"page": "x"}, {"bogus": "1"}):
        r = await api.get("/x-dna", params=bad)
        assert r.status == 400, bad


async def test_filters_in_query_and_path(api):
    a, b, a1, a2, a11, akey = await tree(api)

    async def ids(path, **params):
        r = await api.get(path, params=params or None)
        assert r.status == 200, r.body
        return [u["ID"] for u in r.body]

    assert await ids("/x-users", level="2") == [a1, a2]
    assert await ids("/x-users", level="L3") == [a11]
    assert await ids("/x-users", name="L2") == [a1, a2]
    assert await ids("/x-dna/L2") == [a1, a2]
    assert await ids("/x-users/L1") == [a, b]
    assert await ids("/x-dna/G2") == [b]
    assert await ids("/x-dna", id="R3") == [a1]
    assert await ids("/x-dna/T4") == [a11]
    assert await ids("/x-dna/F1.5") == [b]
    assert await ids("/x-dna", name="tree-a1") == [a1]
    assert await ids("/x-dna", email="TREE-A2@example.com") == [a2]
    assert await ids("/x-dna", dna=f".1.{a}.{a1}.") == [a1, a11]
    assert await ids(f"/x-dna/{a1}") == [a1, a11]
    assert await ids("/x-dna", id=str(b)) == [b]
    # a child sees only its own subtree through filters too
    r = await api.get("/x-dna/L1", key=akey)
    assert r.body == []
    r = await api.get("/x-dna/L2", key=akey)
    assert [u["ID"] for u in r.body] == [a1, a2]


async def test_child_limits_never_exceed_the_parents(api):
    pid, pkey = await new_user(api, "capped-parent", 300, ChildLimit=3, HardLimit=50)
    body = {"Name": "capped-kid", "Email": "capped-kid@example.com", "CreditGranted": 20}
    for extra in ({"ChildLimit": 4}, {"HardLimit": 50.01}, {"Rates": 2, "HardLimit": 100.01}):
        r = await api.post("/x-users", {**body, **extra}, key=pkey)
        assert (r.status, r.error_code) == (400, "invalid_request"), extra
    r = await api.post("/x-users", body, key=pkey)  # defaults are capped, not refused
    kid = r.body["User"]["ID"]
    view = (await api.get(f"/x-users/{kid}", key=pkey)).body
    assert (view["ChildLimit"], view["HardLimit"], view["SoftLimit"]) == (3, 50, 40)
    r = await api.put(f"/x-users/{kid}", {"ChildLimit": 5}, key=pkey)
    assert r.status == 400
    r = await api.put(f"/x-users/{kid}", {"HardLimit": 60}, key=pkey)
    assert r.status == 400
    assert (
        await api.put(f"/x-users/{kid}", {"HardLimit": 0, "ChildLimit": 2}, key=pkey)
    ).status == 200
    r = await api.put(f"/x-users/{kid}", {"CreditGranted": 10}, key=pkey)
    assert r.status == 200
    assert (await api.get(f"/x-users/{kid}", key=pkey)).body["HardLimit"] == 0
