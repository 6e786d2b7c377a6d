"""Every management write is all or nothing, in memory as on disk (issue 9, critical item).

A SQLite trigger makes each endpoint's unit fail in the real writer; the answer is a
500 `write_failed` in the error format, what the GET endpoints show is unchanged,
and after a restart nothing of the failed change exists.
"""

import sqlite3
from datetime import UTC, datetime

from tests.helpers import start_gateway
from tests.plugins.test_users import new_user

DOOM = """CREATE TRIGGER doom BEFORE INSERT ON op_logs
BEGIN SELECT RAISE(ABORT, 'doomed'); END"""
OPENAI_SECRET = "sk-proj-" + "a" * 40
ANTHROPIC_SECRET = "sk-ant-api03-" + "b" * 40
NEW_KEY = "sk-Xvs" + "q1_-" * 11 + "z"


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


async def seen(api, user_key: str) -> dict:
    """What the management API shows: keys, config, news, and whose keys work."""
    keys = await api.get("/x-keys")
    config = await api.get("/x-config")
    news = await api.get("/dashboard/x-user-news", key=user_key)
    return {
        "keys": [{**k, "SleepUntil": None} for k in keys.body],
        "config": config.body,
        "news": news.body,
        "root works": (await api.get("/x-users")).status,
        "user works": (await api.get("/x-users", key=user_key)).status,
        "new key works": (await api.get("/x-users", key=NEW_KEY)).status,
    }


async def test_failed_writes_leave_memory_and_disk_unchanged(aiohttp_server, tmp_path):
    path = tmp_path / "undo.db"
    api = await start_gateway(aiohttp_server, path)
    try:
        body = {"SecretKey": OPENAI_SECRET, "Level": 1, "Provider": "https://api.openai.com"}
        key_id = (await api.post("/x-keys", body)).body["Key"]["ID"]
        r = await api.put("/x-config", {"MODEL_MAPPER": "gpt-x=gpt-4o", "LOW_BALANCE": 5})
        assert r.status == 200, r.body
        uid, ukey = await new_user(api, "rotated", 30)
        assert (await api.post("/x-news", {"title": "sys", "content": "hello"})).status == 201
        assert (await api.post(f"/x-news/{uid}", {"title": "to u", "content": "hi"})).status == 201
        before = await seen(api, ukey)
        with sqlite3.connect(path) as conn:
            conn.execute(DOOM)
        anthropic = {
            "SecretKey": ANTHROPIC_SECRET,
            "Level": 2,
            "Provider": "https://api.anthropic.com",
        }
        doomed = {
            "add key (extends LEVEL_MAPPER)": lambda: api.post("/x-keys", anthropic),
            "update key": lambda: api.put(
                f"/x-keys/{key_id}", {"Name": "x", "Level": 3, "Status": False}
            ),
            "delete key": lambda: api.delete(f"/x-keys/{key_id}"),
            "update config": lambda: api.put("/x-config", {"MODEL_MAPPER": "a=b", "EMAIL_TLS": 1}),
            "delete config": lambda: api.delete("/x-config", {"keys": ["MODEL_MAPPER"]}),
            "rotate self": lambda: api.post(
                "/x-self", {"confirm": f"{today()}-ROTATE-SELF"}, key=ukey
            ),
            "rotate root": lambda: api.post(
                "/x-root", {"name": "rotated", "key": NEW_KEY, "confirm": f"{today()}-ROTATE-ROOT"}
            ),
            "system news": lambda: api.post("/x-news", {"title": "no", "content": "never"}),
            "targeted news": lambda: api.post(f"/x-news/{uid}", {"title": "no", "content": "x"}),
            "delete system news": lambda: api.delete("/x-news", {}),
            "delete targeted news": lambda: api.delete(f"/x-news/{uid}", {}),
        }
        for what, call in doomed.items():
            r = await call()
            assert await seen(api, ukey) == before, what
            assert (r.status, r.error_code) == (500, "write_failed"), (what, r.body)
            assert set(r.body["error"]) >= {"message", "type", "code"}
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TRIGGER doom")
    finally:
        await api.close()
    again = await start_gateway(aiohttp_server, path)
    try:
        assert await seen(again, ukey) == before
    finally:
        await again.close()
