"""/x-config and /x-conf: the seed's formats, atomic batches, versions, defaults, secrets hidden."""

import pytest

from tests import fakes
from tests.fakes import add_key, chat
from tests.helpers import start_gateway

make_upstream = fakes.make_upstream  # fixture

SEED_BODY = {
    "MODEL_MAPPER": "gpt-3.5*=gpt-4o-mini, o*=gpt-4o",
    "LEVEL_MAPPER": "gpt-4*=2, claude*=3",
    "SWITCH_OVER": "1=2,2=3",
    "RESOURCES": "/v1/chat/completions, /v1/embeddings",
    "MODEL_LIMITS": '{\n "gpt-4o": {"rpm": 30, "tpm": 90000}\n}',
    "EMAIL_SMTP": "smtp.gmail.com",
    "EMAIL_TLS": "true",
}


async def test_seed_update_then_get(api):
    r = await api.put("/x-config", SEED_BODY)
    assert r.status == 200, r.body
    got = (await api.get("/x-config")).body
    assert got["success"] is True and got["oid"] == 1 and got["version"] == 1
    c = got["configs"]
    assert c["MODEL_MAPPER"] == {"gpt-3.5*": "gpt-4o-mini", "o*": "gpt-4o"}
    assert c["LEVEL_MAPPER"] == {"gpt-4*": 2, "claude*": 3}
    assert c["SWITCH_OVER"] == {"1": 2, "2": 3}
    assert c["RESOURCES"] == {"/v1/chat/completions": {}, "/v1/embeddings": {}}
    assert c["MODEL_LIMITS"] == {"gpt-4o": {"rpm": 30, "tpm": 90000}}
    assert c["EMAIL_TLS"] is True  # natural types, as the seed shows them
    r = await api.put("/x-config", {"EMAIL_PORT": "587", "EMAIL_TLS": "starttls"})
    assert r.body["configs"]["EMAIL_PORT"] == 587 and r.body["configs"]["EMAIL_TLS"] == "starttls"
    r = await api.put("/x-config", {"EMAIL_TLS": False})
    assert r.body["configs"]["EMAIL_TLS"] is False
    cfg = api.gw.config(1)
    assert cfg.map_model("gpt-3.5-turbo") == "gpt-4o-mini" and cfg.level_of("claude-x") == 3
    assert cfg.switch_over == {1: 2, 2: 3}


async def test_post_works_like_put(api):
    r = await api.post("/x-config", {"LEVEL_MAPPER": {"gpt-4*": 2}})
    assert r.status == 200 and r.body["configs"]["LEVEL_MAPPER"] == {"gpt-4*": 2}


@pytest.mark.parametrize(
    "bad",
    [
        {"LEVEL_MAPPER": "gpt-4*=two"},
        {"MODEL_MAPPER": "nopair"},
        {"SWITCH_OVER": "1=1"},
        {"RESOURCES": "/v1/../etc"},
        {"MODEL_LIMITS": "{not json"},
        {"MODEL_LIMITS": {"gpt-4o": {"rpm": -1}}},
        {"MODEL_LIMITS": {"gpt-4o": {"bogus": 1}}},
        {"PRICING": {"gpt-4o": {"input": "cheap"}}},
        {"EMAIL_PORT": "99999"},
        {"UNKNOWN_KEY": "x"},
        {"USER_MIN_BALANCE": "NaN"},
    ],
)
async def test_batch_is_all_or_nothing(api, bad):
    await api.put("/x-config", {"MODEL_MAPPER": "a*=b"})
    r = await api.put("/x-config", {"LEVEL_MAPPER": "x*=5", **bad})
    assert r.status == 400, r.body
    assert r.body["error"]["type"] == "invalid_request_error"
    cfg = api.gw.config(1)
    assert cfg.version == 1 and "LEVEL_MAPPER" not in cfg.values


async def test_model_limits_and_pricing_merge_and_reset(api):
    await api.put(
        "/x-config", {"MODEL_LIMITS": {"gpt-4o": {"rpm": 30}}, "PRICING": {"m1": {"input": 1}}}
    )
    await api.put(
        "/x-config", {"MODEL_LIMITS": {"claude*": {"tpm": 5}}, "PRICING": '{"m2": {"output": 2}}'}
    )
    c = (await api.get("/x-config")).body["configs"]
    assert c["MODEL_LIMITS"] == {"gpt-4o": {"rpm": 30}, "claude*": {"tpm": 5}}
    assert set(c["PRICING"]) == {"m1", "m2"}
    assert api.gw.config(1).prices("m2").output == 2.0
    await api.put("/x-config", {"MODEL_LIMITS": "*", "PRICING": "="})
    c = (await api.get("/x-config")).body["configs"]
    assert c["MODEL_LIMITS"] == {} and c["PRICING"] == {}


async def test_email_pass_never_shown(api):
    await api.put("/x-config", {"EMAIL_PASS": "hunter2-secret", "EMAIL_AUTH": "me"})
    for path in ("/x-config", "/x-conf"):
        r = await api.get(path)
        assert "hunter2-secret" not in r.raw.decode()
    await api.gw.store.flush()
    logs = await api.gw.store.fetchall("SELECT details FROM op_logs")
    assert all("hunter2" not in row["details"] for row in logs)


async def test_delete_restores_defaults_and_bumps_version(api):
    await api.put("/x-config", SEED_BODY)
    r = await api.delete("/x-config", {"keys": ["MODEL_MAPPER", "SWITCH_OVER"]})
    assert r.status == 200 and r.body["version"] == 2
    cfg = api.gw.config(1)
    assert cfg.map_model("gpt-3.5-turbo") == "gpt-3.5-turbo" and cfg.switch_over == {}
    assert "LEVEL_MAPPER" in cfg.values
    assert (await api.delete("/x-config", {"keys": ["NOPE"]})).status == 400
    assert (await api.delete("/x-config", {})).status == 400
    await api.gw.store.flush()
    actions = [
        r["action"] for r in await api.gw.store.fetchall("SELECT action FROM op_logs ORDER BY id")
    ]
    assert actions == ["update_config", "delete_config"]


async def test_conf_overview_shows_keys_state_and_thresholds(api):
    await api.post(
        "/x-keys", {"SecretKey": "sk-" + "k" * 30, "Level": 1, "Provider": "https://api.openai.com"}
    )
    await api.post(
        "/x-keys", {"SecretKey": "sk-" + "j" * 30, "Level": 2, "Provider": "https://api.openai.com"}
    )
    key = api.gw.state.keys[2]
    key.sleep_until, key.sleep_reason = 4e9, "auth_failed"
    r = await api.get("/x-conf")
    assert r.status == 200
    assert r.body["UserMinBalance"] == 2 and r.body["UserApiBalance"] == 20
    assert r.body["sleeping"] == [2]
    assert r.body["levels"]["2"] == {"total": 1, "enabled": 1, "awake": 0}
    sleeping = [k for k in r.body["keys"] if k["ID"] == 2][0]
    assert sleeping["Sleeping"] is True and sleeping["SleepReason"] == "auth_failed"


async def test_config_survives_restart(aiohttp_server, tmp_path):
    db = tmp_path / "conf.db"
    first = await start_gateway(aiohttp_server, db)
    await first.put("/x-config", SEED_BODY)
    await first.close()
    second = await start_gateway(aiohttp_server, db)
    try:
        cfg = second.gw.config(1)
        assert cfg.version == 1 and cfg.level_of("gpt-4-turbo") == 2
    finally:
        await second.close()


async def test_x_conf_shows_each_keys_recent_failures(make_gateway, make_upstream):
    upstream = await make_upstream()
    api = await make_gateway()
    first = await add_key(api, upstream)
    second = await add_key(api, upstream)
    upstream.fail("500", "503")  # one attempt on each key, then the request fails
    r = await api.post("/v1/chat/completions", chat())
    assert r.status == 503
    r = await api.post("/v1/chat/completions", chat())
    assert r.status == 200  # successes are not failures
    body = (await api.get("/x-conf")).body
    failures = body["failures"]
    assert sorted(failures) == sorted([str(first), str(second)])
    outcomes = sorted(f["outcome"] for entries in failures.values() for f in entries)
    assert outcomes == ["500", "503"]
    assert all(f["at"].endswith("Z") for entries in failures.values() for f in entries)
    assert (await api.delete(f"/x-keys/{first}")).status == 200
    assert list((await api.get("/x-conf")).body["failures"]) == [str(second)]


async def test_tenant_mail_server_must_be_public_and_on_a_mail_port(make_gateway):
    from tests.fakes import add_user

    api = await make_gateway(allow_private_providers=False)
    _, tenant = await add_user(api, Owner=True)
    for body in (
        {"EMAIL_SMTP": "127.0.0.1"},
        {"EMAIL_SMTP": "localhost"},
        {"EMAIL_SMTP": "10.1.2.3"},
        {"EMAIL_SMTP": "169.254.169.254"},
        {"EMAIL_SMTP": "::1"},
        {"EMAIL_SMTP": "8.8.8.8", "EMAIL_PORT": 6379},
        {"EMAIL_SMTP": "http://8.8.8.8:25/"},
        {"EMAIL_PORT": "²⁵"},
    ):
        r = await api.put("/x-config", body, key=tenant)
        assert r.status == 400 and r.error_code == "invalid_config", (body, r.body)
    assert (await api.get("/x-config", key=tenant)).body["configs"] == {}
    for port in (25, 465, 587, 2525):
        r = await api.put("/x-config", {"EMAIL_SMTP": "8.8.8.8", "EMAIL_PORT": port}, key=tenant)
        assert r.status == 200, r.body
    # Root runs the machine: its own mail server may be local, on any port.
    r = await api.put("/x-config", {"EMAIL_SMTP": "127.0.0.1", "EMAIL_PORT": 8025})
    assert r.status == 200


async def test_an_update_waiting_on_its_mail_check_keeps_a_concurrent_update(make_gateway):
    """The mail server's DNS check awaits; an update that lands meanwhile must survive."""
    import asyncio

    from tests.fakes import add_user
    from tests.test_ssrf import Rebinding

    class Slow(Rebinding):
        async def resolve(self, host, port=0, family=0):
            await release.wait()
            return await super().resolve(host, port, family)

    release = asyncio.Event()
    api = await make_gateway(allow_private_providers=False)
    api.gw.resolver = Slow("8.8.8.8")
    _, tenant = await add_user(api, Owner=True)
    mail = asyncio.ensure_future(
        api.put("/x-config", {"EMAIL_SMTP": "mail.test", "EMAIL_PORT": 587}, key=tenant)
    )
    await asyncio.sleep(0.05)  # the mail update now waits on DNS
    r = await api.put("/x-config", {"LOW_BALANCE": 7}, key=tenant)
    assert r.status == 200, r.body
    release.set()
    assert (await mail).status == 200
    configs = (await api.get("/x-config", key=tenant)).body["configs"]
    assert configs["EMAIL_SMTP"] == "mail.test" and configs["LOW_BALANCE"] == 7, configs
