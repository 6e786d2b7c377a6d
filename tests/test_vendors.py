"""Vendor types on provider keys: inferred, explicit, validated, persisted; Azure and Gemini URLs."""

from __future__ import annotations

import openai
import pytest

from tests.fakes import add_key, add_user, set_config
from tests.helpers import start_gateway
from tests.vendor_fakes import AzureFake, GeminiFake
from xaiproxy import vendors
from xaiproxy.store.sqlite_schema import MIGRATIONS

pytest_plugins = ["tests.fakes_fixtures", "tests.vendor_fixtures"]
SECRET = "sk-vendor-" + "v" * 30


async def add(api, provider: str, **extra):
    return await api.post(
        "/x-keys", {"SecretKey": SECRET, "Level": 1, "Provider": provider, **extra}
    )


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("https://api.openai.com", "openai"),
        ("https://api.openai.com/v1", "openai"),
        ("https://api.anthropic.com", "anthropic"),
        ("https://my-res.openai.azure.com", "azure"),
        ("https://my-res.cognitiveservices.azure.com", "azure"),
        ("https://generativelanguage.googleapis.com/v1beta/openai", "gemini"),
        ("https://api.deepseek.com", "openai-compatible"),
        ("http://127.0.0.1:8000", "openai-compatible"),
        ("https://openai.azure.com.evil.example", "openai-compatible"),
        ("https://notapi.openai.com", "openai-compatible"),
    ],
)
def test_type_is_inferred_from_the_provider_host(provider, expected):
    assert vendors.infer(provider) == expected


async def test_type_shown_in_keys_and_conf_and_settable(api):
    r = await add(api, "https://api.anthropic.com")
    assert r.status == 201 and r.body["Key"]["Type"] == "anthropic"
    assert r.body["LevelMapper"] == {"claude*": 1}
    r = await add(api, "https://llm.example.com", Type="gemini", Level=2)
    assert r.body["Key"]["Type"] == "gemini" and r.body["LevelMapper"]["gemini*"] == 2
    kid = r.body["Key"]["ID"]
    assert [k["Type"] for k in (await api.get("/x-keys")).body] == ["anthropic", "gemini"]
    assert [k["Type"] for k in (await api.get("/x-conf")).body["keys"]] == ["anthropic", "gemini"]
    r = await api.put(f"/x-keys/{kid}", {"Type": "openai-compatible"})
    assert r.status == 200 and r.body["Key"]["Type"] == "openai-compatible"
    # a new host without a Type implies the new host's vendor
    r = await api.put(f"/x-keys/{kid}", {"Provider": "https://x.openai.azure.com"})
    assert r.body["Key"]["Type"] == "azure"


async def test_unknown_type_is_400_and_changes_nothing(api):
    r = await add(api, "https://api.openai.com", Type="bedrock")
    assert r.status == 400 and r.body["error"]["code"] == "invalid_key_type"
    assert "openai-compatible" in r.body["error"]["message"]
    assert api.gw.state.keys == {}
    kid = (await add(api, "https://api.openai.com")).body["Key"]["ID"]
    r = await api.put(f"/x-keys/{kid}", {"Type": "", "Name": "renamed"})
    assert r.status == 400 and r.body["error"]["type"] == "invalid_request_error"
    key = api.gw.state.keys[kid]
    assert key.type == "openai" and key.name == ""
    r = await api.put(f"/x-keys/{kid}", {"Type": 7})
    assert r.status == 400


async def test_type_persists_across_restart(aiohttp_server, tmp_path):
    db = tmp_path / "types.db"
    first = await start_gateway(aiohttp_server, db)
    await add(first, "https://api.openai.com", Type="openai-compatible")
    await add(first, "https://api.anthropic.com")
    await first.close()
    second = await start_gateway(aiohttp_server, db)
    try:
        assert sorted(k.type for k in second.gw.state.keys.values()) == [
            "anthropic",
            "openai-compatible",
        ]
    finally:
        await second.close()


async def test_keys_stored_before_the_type_column_get_an_inferred_type(aiohttp_server, tmp_path):
    import sqlite3

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        conn.executescript(f"{script}\nPRAGMA user_version={number};")
    conn.execute(
        "INSERT INTO provider_keys (id, owner_id, provider, secret, created_at, updated_at)"
        " VALUES (1, 1, 'https://x.openai.azure.com', ?, 0, 0)",
        (SECRET,),
    )
    conn.commit()
    conn.close()
    api = await start_gateway(aiohttp_server, db)
    try:
        assert api.gw.state.keys[1].type == "azure"
    finally:
        await api.close()


# -- Azure and Gemini requests, as the vendor expects them ----------------------------------
async def test_azure_deployment_url_api_version_and_api_key(make_gateway, make_vendor):
    fake = await make_vendor(AzureFake)
    api = await make_gateway()
    config = {"deployments": {"gpt-4o-mini": "mini-prod", "text-embedding-*": "emb"}}
    await add_key(api, fake, Type="azure", Config={**config, "api_version": "2025-01-01"})
    _, key = await add_user(api)
    async with openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=key, max_retries=0) as client:
        done = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert done.choices[0].message.content == "hello from the fake"
        assert (
            fake.last.path
            == "/openai/deployments/mini-prod/chat/completions?api-version=2025-01-01"
        )
        headers = {k.lower(): v for k, v in fake.last.headers.items()}
        assert headers["api-key"].startswith("sk-upstream-") and "authorization" not in headers
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "tok0 tok1 tok2 "
        await client.embeddings.create(model="text-embedding-3-small", input="x")
    assert fake.deployments == ["mini-prod", "gpt-4o", "emb"]  # unmapped: the model's own name
    await api.gw.store.flush()
    rows = await api.gw.store.fetchall("SELECT completion_tokens, estimated FROM usage")
    assert [tuple(r) for r in rows] == [(5, 0), (3, 0), (0, 0)]


async def test_azure_default_api_version(make_gateway, make_vendor):
    fake = await make_vendor(AzureFake)
    api = await make_gateway()
    await add_key(api, fake, Type="azure")
    r = await api.post("/v1/chat/completions", {"model": "gpt-4o", "messages": []})
    assert r.status == 200, r.body
    assert fake.last.path.endswith("/gpt-4o/chat/completions?api-version=2024-10-21")


async def test_gemini_openai_compatible_path_with_bearer(make_gateway, make_vendor):
    fake = await make_vendor(GeminiFake)
    api = await make_gateway()
    await add_key(api, fake, Type="gemini")
    _, key = await add_user(api)
    async with openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=key, max_retries=0) as client:
        done = await client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
        )
        stream = await client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert done.usage.prompt_tokens == 12 and "".join(parts) == "tok0 tok1 tok2 "
    assert fake.last.path == "/v1beta/openai/chat/completions"
    assert fake.last.headers["Authorization"].startswith("Bearer sk-upstream-")
    assert key not in str(fake.last.headers)


async def test_plain_openai_key_url_is_unchanged(make_gateway, upstream):
    api = await make_gateway()
    await add_key(api, upstream, Type="openai")
    r = await api.post("/v1/chat/completions", {"model": "gpt-4o", "messages": []})
    assert r.status == 200 and upstream.last.path == "/v1/chat/completions"


async def test_models_lists_what_the_caller_reaches_across_vendors(make_gateway, make_vendor):
    claude, azure = await make_vendor(), await make_vendor(AzureFake)
    api = await make_gateway()
    await add_key(api, claude, level=1, Type="anthropic")
    deployments = {"gpt-4o": "prod", "my-finetune": "ft", "gpt-4.1*": "g41"}
    await add_key(api, azure, level=2, Type="azure", Config={"deployments": deployments})
    await add_key(api, claude, level=3, Type="gemini", Status=False)  # disabled: reaches nothing
    await set_config(
        api,
        LEVEL_MAPPER={"gpt*": 2, "gemini*": 3},
        SWITCH_OVER={"1": 2},
        MODEL_MAPPER="fast=claude-haiku-4-5",
    )
    _, key = await add_user(api, AllowModels="fast, gpt-4o, my-*, gemini*")
    async with openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=key, max_retries=0) as client:
        listed = {m.id: m.owned_by async for m in client.models.list()}
    assert listed["fast"] == "anthropic"  # an alias, by the model it maps to
    assert listed["gpt-4o"] == "azure" and listed["my-finetune"] == "azure"  # via SWITCH_OVER
    assert not any(m.startswith("gemini") for m in listed)  # its key is disabled
    assert "gpt-4o-mini" not in listed  # not allowed for this caller
    everything = {m["id"] for m in (await api.get("/v1/models")).body["data"]}
    assert "gpt-4o-mini" in everything and "gpt-4.1*" not in everything
