"""SendKey on create: the new key mailed through the owner's EMAIL_* settings, against a
real local SMTP server (aiosmtpd), as the alert tests do."""

from __future__ import annotations

import asyncio

from tests.plugins import test_alerts as mail

smtp = mail.smtp  # fixture: a real aiosmtpd server and its inbox


async def received(inbox, count: int = 1, within: float = 5.0) -> list:
    for _ in range(int(within / 0.02)):
        if len(inbox.messages) >= count:
            break
        await asyncio.sleep(0.02)
    return inbox.messages


def body(name: str, **extra) -> dict:
    return {"Name": name, "Email": f"{name}@example.com", "CreditGranted": 5, **extra}


async def test_send_key_mails_the_new_key(api, smtp):
    await mail.use_smtp(api, smtp.port)
    r = await api.post("/x-users", body("mailed-user", SendKey=True))
    assert r.status == 200, r.body
    key = r.body["User"]["SecretKey"]
    assert r.body["User"]["Updates"]["SendKey"] is True
    (msg,) = await received(smtp)
    assert msg.rcpt_tos == ["mailed-user@example.com"]
    assert msg.mail_from == "alerts@gateway.example"
    assert key in msg.content.decode() and "mailed-user" in mail._subject(msg)
    assert (await api.get("/dashboard/x-user-info", key=key)).status == 200
    log = await api.gw.store.fetchone("SELECT details FROM op_logs WHERE action = 'add_user'")
    assert "key sent by email" in log["details"] and key not in log["details"]
    # without SendKey, nothing is mailed
    assert (await api.post("/x-users", body("quiet-user"))).status == 200
    assert (await api.post("/x-users", body("quiet-two", SendKey=False))).status == 200
    await asyncio.sleep(0.2)
    assert len(smtp.messages) == 1


async def test_send_key_without_mail_settings_creates_nothing(api, smtp):
    r = await api.post("/x-users", body("unmailed", SendKey=True))
    assert (r.status, r.error_code) == (400, "email_not_configured"), r.body
    assert "unmailed" not in api.gw.state.by_name
    assert await api.gw.store.fetchall("SELECT * FROM op_logs WHERE action = 'add_user'") == []
    uid = (await api.post("/x-users", body("later-user"))).body["User"]["ID"]
    r = await api.put(f"/x-users/{uid}", {"SendKey": True})  # a create-only field
    assert r.status == 400 and "SendKey" in r.body["error"]["message"]


async def test_a_failing_mail_server_never_fails_the_create(api, caplog):
    await mail.use_smtp(api, mail.free_port())  # nothing listens there
    r = await api.post("/x-users", body("still-made", SendKey=True))
    assert r.status == 200 and "still-made" in api.gw.state.by_name
    key = r.body["User"]["SecretKey"]
    for _ in range(250):
        if "SendKey mail" in caplog.text:
            break
        await asyncio.sleep(0.02)
    assert "SendKey mail for account" in caplog.text and key not in caplog.text
