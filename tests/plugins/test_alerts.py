"""Email alerts against a real local SMTP server (aiosmtpd): once per month, once until recharge."""

import asyncio
import contextlib
import logging
import socket
import time

import pytest
from aiosmtpd.controller import Controller
from xaiproxy_plugins import alerts as alerts_mod

from tests import fakes
from tests.fakes import add_user, chat, ready
from tests.helpers import start_gateway
from tests.plugins.reports import new_user
from xaiproxy import ledger
from xaiproxy.context import RequestContext

make_upstream, upstream = fakes.make_upstream, fakes.upstream  # fixtures
CHAT = "/v1/chat/completions"


class Inbox:
    """aiosmtpd handler: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"

    def subjects(self) -> list[str]:
        return [_subject(m) for m in self.messages]


def _subject(envelope) -> str:
    for line in envelope.content.decode().splitlines():
        if line.startswith("Subject: "):
            return line[9:]
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.port = controller.port
    yield inbox
    controller.stop()


async def use_smtp(api, port: int, **extra) -> None:
    body = {"EMAIL_SMTP": "127.0.0.1", "EMAIL_PORT": port, "EMAIL_TLS": "false"}
    body |= {"XAI_MAIL": "alerts@gateway.example", **extra}
    r = await api.put("/x-config", body)
    assert r.status == 200, r.body


def alerts_of(api) -> alerts_mod.Alerts:
    inst = alerts_mod.instance(api.gw)
    inst.backoff, inst.drain_timeout = 0.01, 0.5  # keep failing paths fast
    return inst


def fire(api, acc) -> float:
    """Run the on_usage hooks as the data plane does after billing; return their time."""
    ctx = RequestContext(request=None, request_id="t", started=0.0, path="/v1/chat/completions")
    ctx.account = acc
    started = time.perf_counter()
    for hook in api.gw.hooks.on_usage:
        hook(ctx)
    return time.perf_counter() - started


async def settle(inst, inbox=None, count=None, wait=5.0):
    """Wait for the sender to finish what is queued (and for `count` mails, if given)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        idle = inst.queue.empty() and inst.queue._unfinished_tasks == 0
        if idle and (count is None or len(inbox.messages) >= count):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("alerts did not settle")


def overspend(acc, inst) -> None:
    acc.month, acc.month_n = inst.month(), ledger.to_n(acc.soft_limit + 1, acc.rates)


async def test_soft_limit_mails_once_per_month(api, smtp):
    uid, _ = await new_user(api, "spender-one", 100, BillingEmail="billing@example.com")
    await use_smtp(api, smtp.port)
    inst, acc = alerts_of(api), api.gw.state.accounts[uid]
    acc.month_n = ledger.to_n(acc.soft_limit - 1, acc.rates)
    acc.month = inst.month()
    fire(api, acc)
    await settle(inst)
    assert smtp.messages == []  # under the soft limit
    overspend(acc, inst)
    for _ in range(5):
        fire(api, acc)
    await settle(inst, smtp, 1)
    await asyncio.sleep(0.05)
    (mail,) = smtp.messages
    assert mail.rcpt_tos == ["billing@example.com"]
    assert mail.mail_from == "alerts@gateway.example"
    assert "spender-one" in _subject(mail) and "soft limit" in _subject(mail)
    await api.gw.store.flush()
    row = await api.gw.store.fetchone("SELECT * FROM alerts_sent WHERE account_id = ?", (uid,))
    assert (row["kind"], row["period"]) == ("soft_limit", inst.month())
    # a new month: one more, and only one
    inst.month = lambda: "2999-01"
    acc.month = "2999-01"
    fire(api, acc)
    fire(api, acc)
    await settle(inst, smtp, 2)
    await asyncio.sleep(0.05)
    assert len(smtp.messages) == 2


async def test_sent_alerts_survive_a_restart(aiohttp_server, tmp_path, smtp):
    db = tmp_path / "alerts.db"
    first = await start_gateway(aiohttp_server, db)
    uid, _ = await new_user(first, "spender-two", 100)
    await use_smtp(first, smtp.port)
    inst = alerts_of(first)
    overspend(first.gw.state.accounts[uid], inst)
    fire(first, first.gw.state.accounts[uid])
    await settle(inst, smtp, 1)
    await first.close()
    again = await start_gateway(aiohttp_server, db)
    try:
        inst = alerts_of(again)
        acc = again.gw.state.accounts[uid]
        overspend(acc, inst)
        fire(again, acc)
        await settle(inst)
        await asyncio.sleep(0.05)
        assert len(smtp.messages) == 1 and smtp.messages[0].rcpt_tos == ["spender-two@example.com"]
    finally:
        await again.close()


async def test_low_balance_mails_once_until_recharged(api, smtp):
    uid, _ = await new_user(api, "low-runner", 10)
    await use_smtp(api, smtp.port)
    inst, acc = alerts_of(api), api.gw.state.accounts[uid]
    fire(api, acc)
    await settle(inst)
    assert smtp.messages == []  # 10 is above the default LOW_BALANCE of 3
    api.gw.store.submit(api.gw.ledger.spend(acc, ledger.to_n(8, acc.rates)))
    for _ in range(3):
        fire(api, acc)
    await settle(inst, smtp, 1)
    assert smtp.subjects() == ["[xaiproxy] low-runner: low balance"]
    assert await _low_rows(api, uid) == 1
    r = await api.put(f"/x-users/{uid}", {"CreditGranted": 20})
    assert r.status == 200, r.body
    fire(api, acc)  # back above the threshold: re-armed
    assert await _low_rows(api, uid) == 0
    fire(api, acc)
    await settle(inst)
    assert len(smtp.messages) == 1
    api.gw.store.submit(api.gw.ledger.spend(acc, ledger.to_n(20, acc.rates)))
    fire(api, acc)
    fire(api, acc)
    await settle(inst, smtp, 2)
    await asyncio.sleep(0.05)
    assert len(smtp.messages) == 2


async def _low_rows(api, uid) -> int:
    await api.gw.store.flush()
    return await api.gw.store.scalar(
        "SELECT COUNT(*) FROM alerts_sent WHERE account_id = ? AND kind = 'low_balance'", (uid,)
    )


async def test_low_balance_threshold_is_the_owners_setting(api, smtp):
    uid, _ = await new_user(api, "threshold-user", 10)
    await use_smtp(api, smtp.port, LOW_BALANCE=0)
    inst, acc = alerts_of(api), api.gw.state.accounts[uid]
    api.gw.store.submit(api.gw.ledger.spend(acc, ledger.to_n(9.5, acc.rates)))
    fire(api, acc)
    await settle(inst)
    assert smtp.messages == []  # 0 turns low-balance alerts off
    await use_smtp(api, smtp.port, LOW_BALANCE=1)
    fire(api, acc)
    await settle(inst, smtp, 1)
    assert len(smtp.messages) == 1


async def test_owner_without_smtp_is_skipped_and_logged_once(api, caplog):
    uid, _ = await new_user(api, "quiet-owner", 10)
    inst, acc = alerts_of(api), api.gw.state.accounts[uid]
    overspend(acc, inst)
    with caplog.at_level(logging.WARNING, logger="xaiproxy.alerts"):
        for _ in range(3):
            fire(api, acc)
    assert inst.queue.empty() and inst.sent == 0
    assert len([r for r in caplog.records if "no EMAIL_SMTP" in r.getMessage()]) == 1


async def test_unreachable_smtp_never_blocks_and_recovers(api, smtp, caplog):
    uid, _ = await new_user(api, "unlucky-one", 100)
    await use_smtp(api, free_port(), EMAIL_AUTH="mailer", EMAIL_PASS="hunter2-secret")
    inst, acc = alerts_of(api), api.gw.state.accounts[uid]
    overspend(acc, inst)
    with caplog.at_level(logging.WARNING, logger="xaiproxy.alerts"):
        elapsed = max(fire(api, acc) for _ in range(20))
        assert elapsed < 0.01  # the hook only queues
        await settle(inst)
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == inst.retries
    assert not any("hunter2" in r.getMessage() for r in caplog.records)
    assert inst.soft.get(uid) is None  # not marked as sent: it will be tried again
    # the management plane still answers, and the sender is alive for the next mail
    assert (await api.get("/dashboard/x-user-status")).status == 200
    await use_smtp(api, smtp.port, EMAIL_AUTH="")
    fire(api, acc)
    await settle(inst)
    assert smtp.messages == []  # still cooling down after the failure
    inst.failed.clear()
    fire(api, acc)
    await settle(inst, smtp, 1)
    assert len(smtp.messages) == 1


async def test_full_queue_drops_without_blocking(api, smtp):
    await use_smtp(api, smtp.port)
    inst = alerts_of(api)
    inst.task.cancel()  # restart the sender on a one-slot queue
    with contextlib.suppress(asyncio.CancelledError):
        await inst.task
    inst.queue = asyncio.Queue(1)
    inst.task = asyncio.create_task(inst._run())
    accounts = []
    for i in range(3):
        uid, _ = await new_user(api, f"crowd-{i}", 10)
        accounts.append(api.gw.state.accounts[uid])
    for acc in accounts:
        overspend(acc, inst)
        fire(api, acc)
    # at most the queue's size (plus the one being sent) went out; the rest stay unmarked
    await settle(inst)
    await asyncio.sleep(0.05)
    marked = [a.id for a in accounts if inst.soft.get(a.id)]
    assert 1 <= len(smtp.messages) == len(marked) < 3


async def test_real_requests_trigger_the_alert_and_survive_a_dead_server(
    make_gateway, upstream, smtp
):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, credit=50, HardLimit=100, SoftLimit=0.000001)
    await use_smtp(api, free_port())  # nobody listens: every send fails
    inst = alerts_of(api)
    for _ in range(3):
        r = await api.post("/v1/chat/completions", chat(), key=key)
        assert r.status == 200, r.body
    await settle(inst)
    assert inst.sent == 0 and inst.soft.get(uid) is None
    await use_smtp(api, smtp.port)
    inst.failed.clear()
    for _ in range(3):
        assert (await api.post("/v1/chat/completions", chat(), key=key)).status == 200
    await settle(inst, smtp, 1)
    await asyncio.sleep(0.05)
    (mail,) = smtp.messages
    assert mail.rcpt_tos == [api.gw.state.accounts[uid].email]


async def test_instances_sharing_redis_mail_each_alert_once(
    aiohttp_server, tmp_path, upstream, redis_url, smtp
):
    """Two gateways on one database and one Redis: the soft limit is read from the spend of
    both (each alone is under it), and each alert goes out from one of them only."""
    db = tmp_path / "shared.db"
    a = await start_gateway(aiohttp_server, db, redis=redis_url)
    try:
        await fakes.add_key(a, upstream)
        await use_smtp(a, smtp.port)
        uid, key = await add_user(a, credit=3.5, SoftLimit=0.5)
        b = await start_gateway(aiohttp_server, db, redis=redis_url)
        try:
            for api in (a, b):
                alerts_of(api).every = 0.05
            name = a.gw.state.accounts[uid].name
            costly = {"x-fake-usage": '{"completion_tokens": 30000}'}  # 0.3 each with gpt-4o

            async def spend(*apis) -> None:
                for api in apis:
                    r = await api.post(CHAT, chat("gpt-4o"), key=key, headers=costly)
                    assert r.status == 200, r.body
                    await api.gw.shared.drain()

            await spend(a, b)  # 0.6 together, 0.3 on each instance
            assert all(0.3 < ledger.month_spend(x.gw.state.accounts[uid]) < 0.31 for x in (a, b))
            await settle(alerts_of(a), smtp, 1)
            assert smtp.subjects() == [
                f"[xaiproxy] {name}: spend this month reached the soft limit"
            ]
            await spend(a, b, a, b)  # 1.8 spent: over the soft limit on each instance now,
            await asyncio.sleep(1.2)  # and the balance, 1.7, is under LOW_BALANCE (3) on each
            for api in (a, b) * 2:
                assert (await api.post(CHAT, chat(), key=key)).status == 200
            await asyncio.sleep(0.3)
            for api in (a, b):
                await settle(alerts_of(api))
            await asyncio.sleep(0.05)
            assert sorted(smtp.subjects()) == [
                f"[xaiproxy] {name}: low balance",
                f"[xaiproxy] {name}: spend this month reached the soft limit",
            ]
        finally:
            await b.close()
    finally:
        await a.close()
