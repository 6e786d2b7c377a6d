"""SendKey on create (SPEC 3): the new key mailed to the account's Email through the
owner's EMAIL_* settings, the only time besides the create answer that a key is shown.

The mail goes out after the account is stored, in the background: a slow or failing
mail server never delays or fails the create (the answer carries the key anyway), and
a failure is logged without the key.
"""

from __future__ import annotations

import asyncio
import logging
from email.message import EmailMessage

from xaiproxy.api import ApiError
from xaiproxy.state import Account

from . import _mail

log = logging.getLogger("xaiproxy.sendkey")
SMTP_TIMEOUT = 15.0
DRAIN_SECONDS = 5.0
_tasks: set[asyncio.Task] = set()  # kept until done, so none is collected mid-send


def check(gw, owner: Account) -> None:
    """Refuse SendKey before anything changes when the owner cannot mail."""
    if not gw.config(owner.id).values.get("EMAIL_SMTP"):
        raise ApiError(
            400,
            "email_not_configured",
            "SendKey needs the owner's mail settings (EMAIL_SMTP in /x-config); the account"
            " was not created",
        )


def send(gw, owner: Account, acc_id: int, name: str, to: str, key: str) -> None:
    task = asyncio.create_task(_send(gw, owner.id, acc_id, name, to, key))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def drain() -> None:
    """At shutdown: give mails on their way a short while to go out."""
    if _tasks:
        await asyncio.wait(set(_tasks), timeout=DRAIN_SECONDS)


async def _send(gw, owner_id: int, acc_id: int, name: str, to: str, key: str) -> None:
    values = gw.config(owner_id).values
    msg = EmailMessage()
    host = values.get("EMAIL_SMTP", "")
    msg["From"] = values.get("XAI_MAIL") or values.get("EMAIL_AUTH") or f"xaiproxy@{host}"
    msg["To"] = to
    msg["Subject"] = f"Your API key for {name}"
    msg.set_content(
        f"An API account {name} was created for you.\n\nYour secret key:\n\n    {key}\n\n"
        "Keep it safe: it is not shown again. Send it as 'Authorization: Bearer <key>'.\n"
    )
    try:
        await _mail.send(gw, owner_id, msg, SMTP_TIMEOUT)
    except Exception as exc:  # the mail server's trouble is logged, never raised
        log.warning("SendKey mail for account %d failed: %s", acc_id, type(exc).__name__)
