"""Email alerts: a month's spend crossing SoftLimit, and a balance falling under LOW_BALANCE.

The on_usage hook runs on the data plane, so it only compares numbers already in
memory and queues a job; one background task sends the mail through the account
owner's EMAIL_* settings. Each alert goes out once:

- soft_limit: once per calendar month (UTC), when month spend >= SoftLimit > 0;
- low_balance: once until the balance is back at or above the owner's LOW_BALANCE
  (default 3; 0 turns it off); the next request that sees it recovered re-arms it.

What was sent lives in `alerts_sent` and is loaded at start, so a restart sends
nothing twice. With `redis` set (many instances), the hook only notes the account: once
a second a background look reads the shared month spend from Redis (each instance's
memory counts its own requests only), and an alert goes out only by the instance that
claims it there first (SET NX per account and kind, and month for the soft limit), so N
instances send one mail, not N. A mail server that fails is retried a few times, then left alone for
a cool-down; no request ever waits for it or fails because of it. Owners without
EMAIL_SMTP get no mail (logged once per owner).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from email.message import EmailMessage

from xaiproxy import ledger
from xaiproxy.api import Column, StateUnavailable, Table, months
from xaiproxy.state import Account
from xaiproxy.store import ops as o

from . import _mail

log = logging.getLogger("xaiproxy.alerts")
SOFT, LOW = "soft_limit", "low_balance"
CLAIM_TTL = 40 * 86400  # a claim outlives its month (soft) or waits for a re-arm (low)
TABLE = "alerts_sent"
# Created by the core schema before plugins had tables (kept: IF NOT EXISTS adopts it).
SENT = Table(
    TABLE,
    (
        Column("account_id", "int"),
        Column("kind", "text"),
        Column("period", "text"),
        Column("sent_at", "float"),
    ),
    primary_key=("account_id", "kind", "period"),
)


@dataclass(slots=True, frozen=True)
class Mail:
    account_id: int
    kind: str
    period: str
    owner_id: int
    to: str
    subject: str
    text: str


class Alerts:
    """The hook, the set of alerts already out, and the sender task."""

    def __init__(self, gw, queue_size: int = 256, retries: int = 3, backoff: float = 1.0):
        self.gw = gw
        self.retries, self.backoff = retries, backoff
        self.cooldown = 600.0  # seconds before retrying an alert whose sending failed
        self.smtp_timeout = 15.0
        self.drain_timeout = 5.0
        self.soft: dict[int, str] = {}  # account -> month of its last soft-limit alert
        self.low: set[int] = set()  # accounts with a low-balance alert out
        self.failed: dict[tuple[int, str], float] = {}  # (account, kind) -> retry after
        self.no_smtp: set[int] = set()  # owners already logged as having no EMAIL_SMTP
        self.queue: asyncio.Queue[Mail] = asyncio.Queue(queue_size)
        self.task: asyncio.Task | None = None
        self.sent = 0
        self.month = months.current  # "YYYY-MM" now; a test may move it to another month
        # With Redis: accounts to look at (soft limit, low balance) and to re-arm.
        self.every = 1.0  # seconds between two looks
        self.due: set[int] = set()
        self.low_due: set[int] = set()
        self.rearm: set[int] = set()
        self.shared: asyncio.Task | None = None

    # -- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        for row in await self.gw.store.rows(TABLE):
            account_id, kind, period = row["account_id"], row["kind"], row["period"]
            if kind == SOFT and period > self.soft.get(account_id, ""):
                self.soft[account_id] = period
            elif kind == LOW:
                self.low.add(account_id)
        self.task = asyncio.create_task(self._run(), name="xaiproxy-alerts")
        self.shared = asyncio.create_task(self._look(), name="xaiproxy-alerts-shared")

    async def stop(self) -> None:
        """Give queued mail a short while to go out, then stop the sender."""
        if self.task is None:
            return
        if self.shared is not None:
            self.shared.cancel()
            await asyncio.gather(self.shared, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), self.drain_timeout)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.task = None

    # -- the hook (data plane: memory only, never blocks) -------------------
    def on_usage(self, ctx) -> None:
        acc = ctx.account
        if acc is None or acc.is_root or self.task is None:
            return
        self.check_soft(acc)
        self.check_low(acc)

    def check_soft(self, acc: Account) -> None:
        month = self.month()
        if acc.soft_limit <= 0 or self.soft.get(acc.id) == month:
            return
        if self.gw.hot is not None:  # every instance's spend is in Redis: looked at there
            self.due.add(acc.id)
            return
        spent = ledger.month_spend(acc, month)
        if spent >= acc.soft_limit:
            self._soft(acc, month, spent)

    def _soft(self, acc: Account, month: str, spent: float) -> bool:
        subject = f"[xaiproxy] {acc.name}: spend this month reached the soft limit"
        text = (
            f"Account {acc.name} (ID {acc.id}) has spent {spent:.4f} in {month},"
            f" at or above its soft limit of {acc.soft_limit:g}.\n"
            f"Requests stop at the hard limit of {acc.hard_limit:g}.\n"
        )
        if self._queue(acc, SOFT, month, subject, text):
            self.soft[acc.id] = month
            return True
        return False

    def check_low(self, acc: Account) -> None:
        threshold = self.gw.config(acc.owner_acc.id).number("LOW_BALANCE")
        if threshold <= 0:
            return
        balance = ledger.balance(acc)
        if balance >= threshold:
            if acc.id in self.low:  # recharged: re-arm
                self.low.discard(acc.id)
                self.gw.store.submit([o.RowDelete(TABLE, {"account_id": acc.id, "kind": LOW})])
                if self.gw.hot is not None:
                    self.rearm.add(acc.id)
            return
        if acc.id in self.low:
            return
        if self.gw.hot is not None:  # claimed in Redis first, by one instance
            self.low_due.add(acc.id)
            return
        self._low(acc, balance, threshold)

    def _low(self, acc: Account, balance: float, threshold: float) -> bool:
        subject = f"[xaiproxy] {acc.name}: low balance"
        text = (
            f"Account {acc.name} (ID {acc.id}) has a balance of {balance:.4f},"
            f" under the low-balance threshold of {threshold:g}.\n"
            "Recharge it to keep requests going.\n"
        )
        if self._queue(acc, LOW, time.strftime("%Y-%m-%d", time.gmtime()), subject, text):
            self.low.add(acc.id)
            return True
        return False

    # -- many instances: the shared spend, one claim per alert ------------------------
    async def _look(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            if self.gw.hot is None:
                continue
            try:
                await self.look()
            except StateUnavailable as exc:
                log.info("alerts wait for redis: %s", exc)
            except Exception:
                log.exception("looking at alerts through redis failed")

    async def look(self) -> None:
        """Re-arm, then check the noted accounts against Redis (one pipeline of month spends)."""
        hot, accounts = self.gw.hot, self.gw.state.accounts
        while self.rearm:
            acc_id = self.rearm.pop()
            try:
                await hot.release_lock(_claim(LOW, acc_id))
            except StateUnavailable:
                self.rearm.add(acc_id)
                raise
        month = self.month()
        due, self.due = self.due, set()
        soft = [a for i in due if (a := accounts.get(i)) is not None and a.soft_limit > 0]
        try:
            own = await hot.own_month_spends([(a.id, list(a.children)) for a in soft], month)
        except StateUnavailable:
            self.due |= due
            raise
        for acc in soft:
            spent = ledger.from_n(own[acc.id], acc.rates)
            if spent >= acc.soft_limit and self.soft.get(acc.id) != month:
                if await self._claimed(SOFT, acc.id, month):
                    if not self._soft(acc, month, spent):
                        await self._unclaim(SOFT, acc.id, month)
                else:  # another instance sent it
                    self.soft[acc.id] = month
        low, self.low_due = self.low_due, set()
        for acc_id in low:
            acc = accounts.get(acc_id)
            if acc is None or acc.id in self.low:
                continue
            threshold = self.gw.config(acc.owner_acc.id).number("LOW_BALANCE")
            balance = ledger.balance(acc)
            if threshold <= 0 or balance >= threshold:
                continue
            if await self._claimed(LOW, acc.id):
                if not self._low(acc, balance, threshold):
                    await self._unclaim(LOW, acc.id)
            else:
                self.low.add(acc.id)

    async def _claimed(self, kind: str, account_id: int, period: str = "") -> bool:
        return await self.gw.hot.lock(_claim(kind, account_id, period), CLAIM_TTL) is not None

    async def _unclaim(self, kind: str, account_id: int, period: str = "") -> None:
        """Not sent after all (no mail server, a full queue, a failed send): let it go again."""
        if self.gw.hot is not None:
            with contextlib.suppress(StateUnavailable):  # it expires by itself
                await self.gw.hot.release_lock(_claim(kind, account_id, period))

    def _queue(self, acc: Account, kind: str, period: str, subject: str, text: str) -> bool:
        owner = acc.owner_acc
        if not self.gw.config(owner.id).values.get("EMAIL_SMTP"):
            if owner.id not in self.no_smtp:
                self.no_smtp.add(owner.id)
                log.warning("owner %d has no EMAIL_SMTP: %s alerts are not mailed", owner.id, kind)
            return False
        if self.failed.get((acc.id, kind), 0.0) > time.time():
            return False
        mail = Mail(acc.id, kind, period, owner.id, acc.billing_email or acc.email, subject, text)
        try:
            self.queue.put_nowait(mail)
        except asyncio.QueueFull:
            log.warning("alert queue full: %s alert for account %d dropped for now", kind, acc.id)
            return False
        return True

    # -- the sender -------------------------------------------------------
    async def _run(self) -> None:
        while True:
            mail = await self.queue.get()
            try:
                await self._deliver(mail)
            finally:
                self.queue.task_done()

    async def _deliver(self, mail: Mail) -> None:
        for attempt in range(1, self.retries + 1):
            try:
                await self.send(mail)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any mail failure: log, back off, never propagate
                log.warning(
                    "%s alert for account %d: attempt %d/%d failed: %s",
                    mail.kind,
                    mail.account_id,
                    attempt,
                    self.retries,
                    type(exc).__name__,
                )
                if attempt < self.retries:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            else:
                self._record(mail)
                return
        self._give_up(mail)
        await self._unclaim(mail.kind, mail.account_id, mail.period if mail.kind == SOFT else "")

    def _record(self, mail: Mail) -> None:
        self.sent += 1
        row = {"account_id": mail.account_id, "kind": mail.kind, "period": mail.period}
        self.gw.store.submit([o.RowUpsert(TABLE, row | {"sent_at": time.time()})])

    def _give_up(self, mail: Mail) -> None:
        """Unmark, so the alert goes out once the server is back (after a cool-down)."""
        self.failed[(mail.account_id, mail.kind)] = time.time() + self.cooldown
        if mail.kind == SOFT and self.soft.get(mail.account_id) == mail.period:
            del self.soft[mail.account_id]
        elif mail.kind == LOW:
            self.low.discard(mail.account_id)

    async def send(self, mail: Mail) -> None:
        """One message through the owner's SMTP server (EMAIL_* config)."""
        values = self.gw.config(mail.owner_id).values
        host = values.get("EMAIL_SMTP")
        if not host:
            raise RuntimeError("the owner removed EMAIL_SMTP")
        msg = EmailMessage()
        msg["From"] = values.get("XAI_MAIL") or values.get("EMAIL_AUTH") or f"xaiproxy@{host}"
        msg["To"] = mail.to
        msg["Subject"] = mail.subject
        msg.set_content(mail.text)
        # Resolved and checked again at send time: the name may resolve elsewhere by now.
        await _mail.send(self.gw, mail.owner_id, msg, self.smtp_timeout)


def _claim(kind: str, account_id: int, period: str = "") -> str:
    return f"alert:{kind}:{account_id}:{period}"


def instance(gw) -> Alerts | None:
    """The Alerts a gateway runs (its on_usage hook's owner), for operators and tests."""
    for hook in gw.hooks.on_usage:
        if isinstance(getattr(hook, "__self__", None), Alerts):
            return hook.__self__
    return None


def setup(gw) -> None:
    gw.migrations(SENT)
    alerts = Alerts(gw)
    gw.hooks.on_usage.append(alerts.on_usage)
    gw.on_startup(alerts.start)
    gw.on_shutdown(alerts.stop)
