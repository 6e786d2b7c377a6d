"""News: POST/DELETE /x-news[/{target}] and GET /dashboard/x-user-news.

System news (root only) reaches every account. Targeted news names an account (ID,
name or email) below the caller, or a DNA group like `.1.42.`: that account and
everything below it, matched against the tree as it is when the news is read. A
caller may address its own DNA group (news for its whole subtree). Deleting a target
removes the news the caller wrote for it; root's DELETE /x-news removes all system
news. Expired items are never shown and are pruned whenever news is written.

News is bounded (SPEC 6): content at most 8 KB of UTF-8, `days` at most 365, at most
`MAX_LIVE` unexpired items per author, and writing news needs the balance other
management changes need (USER_API_BALANCE; root exempt).
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref

from xaiproxy.api import ApiError, Column, Table
from xaiproxy.ledger import DAY
from xaiproxy.state import Account
from xaiproxy.store import ops as o

from ._userfields import iso

DNA_RE = re.compile(r"^\.(?:[0-9]{1,18}\.)+$")
SYSTEM_DAYS, TARGETED_DAYS = 7.0, 32.0
LIMIT = 100  # items of each kind a reader gets, newest first
MAX_LIVE = 100  # unexpired items one author may have
MAX_CONTENT = 8192  # bytes of UTF-8
NEWS_BODY = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 200},
        "content": {"type": "string", "minLength": 1, "maxLength": MAX_CONTENT},
        "days": {"type": "number", "exclusiveMinimum": 0, "maximum": 365},
    },
    "required": ["title", "content"],
    "additionalProperties": False,
}
NO_BODY = {"type": "object", "properties": {}, "additionalProperties": False}
TABLE = "news"
# Created by the core schema before plugins had tables (kept: IF NOT EXISTS adopts it).
NEWS = Table(
    TABLE,
    (
        Column("id", "int"),
        Column("author_id", "int"),
        Column("target_id", "int", null=True),  # NULL with target_dna NULL = system news
        Column("target_dna", "text", null=True),
        Column("title", "text"),
        Column("content", "text"),
        Column("created_at", "float"),
        Column("expires_at", "float"),
    ),
    primary_key=("id",),
)
SYSTEM = {"target_id": None, "target_dna": None}  # what root's DELETE /x-news removes
NEWEST = ("-created_at", "-id")
_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Target:
    """Whom a targeted news item is for: one account, or a DNA group (account + subtree)."""

    __slots__ = ("account", "dna")

    def __init__(self, account: Account, dna: str | None) -> None:
        self.account, self.dna = account, dna

    @property
    def label(self) -> str:
        return f"group {self.dna}" if self.dna else f"account {self.account.id}"

    def match(self, author: Account) -> dict:
        """The rows of the news `author` wrote for this target."""
        if self.dna:
            return {"author_id": author.id, "target_dna": self.dna}
        return {"author_id": author.id, "target_id": self.account.id}


def resolve(state, caller: Account, ident: str) -> Target:
    """The path's target, inside the caller's subtree; 404 otherwise."""
    if not DNA_RE.match(ident):
        return Target(state.descendant(caller, ident), None)
    acc = state.accounts.get(int(ident.split(".")[-2]))
    inside = acc is not None and (acc is caller or acc.is_descendant_of(caller))
    if not inside or acc.dna != ident:
        raise ApiError(404, "not_found", f"DNA group {ident[:64]!r} not found")
    return Target(acc, ident)


def _item(row) -> dict:
    return {
        "id": row["id"],
        "title": row["title"],
        "content": row["content"],
        "created_at": iso(row["created_at"]),
        "expires_at": iso(row["expires_at"]),
    }


async def _check_room(call, now: float) -> None:
    """The content's size, the caller's balance, and its count of live items."""
    call.require_api_balance()
    if len(call.body["content"].encode("utf-8", "surrogatepass")) > MAX_CONTENT:
        raise ApiError(400, "invalid_request", f"content: at most {MAX_CONTENT} bytes of UTF-8")
    live = {"author_id": call.caller.id, "expires_at": o.Gt(now)}
    if await call.gw.store.count_rows(TABLE, live) >= MAX_LIVE:
        raise _full()


def _full() -> ApiError:
    return ApiError(
        403,
        "news_limit_reached",
        f"you have {MAX_LIVE} unexpired news items; delete some before publishing more",
    )


def _lock(gw) -> asyncio.Lock:
    """One news write at a time per gateway: a count then a write must not interleave
    (one process owns the store, so this bounds each author's live items)."""
    return _LOCKS.setdefault(gw, asyncio.Lock())


async def _create(call, target: Target | None, default_days: float):
    async with _lock(call.gw):
        return await _create_locked(call, target, default_days)


async def _create_locked(call, target: Target | None, default_days: float):
    gw, caller, body = call.gw, call.caller, call.body
    now = time.time()
    await _check_room(call, now)
    news_id = gw.state.next_id("news")
    expires = now + float(body.get("days", default_days)) * DAY
    target_id = None if target is None or target.dna else target.account.id
    target_dna = target.dna if target else None
    label = target.label if target else "system"
    row = {"id": news_id, "author_id": caller.id, "target_id": target_id}
    row |= {"target_dna": target_dna, "title": body["title"], "content": body["content"]}
    row |= {"created_at": now, "expires_at": expires}
    unit = [
        o.RowDelete(TABLE, {"expires_at": o.Le(now)}),
        o.RowInsert(TABLE, row),
        gw.oplog(
            caller,
            "create_news",
            target.account.id if target else 0,
            f"news {news_id} for {label}: {body['title'][:100]}",
        ),
    ]
    await gw.changes.commit(lambda: (None, unit))  # news lives in the store only
    item = {"id": news_id, "title": body["title"], "content": body["content"]}
    item |= {"target": label, "created_at": iso(now), "expires_at": iso(expires)}
    return call.json({"success": True, "news": item}, status=201)


async def create_system(call):
    return await _create(call, None, SYSTEM_DAYS)


async def create_targeted(call):
    target = resolve(call.gw.state, call.caller, call.param("target"))
    return await _create(call, target, TARGETED_DAYS)


async def _delete(call, match: dict, target: Target | None):
    gw, caller = call.gw, call.caller
    ids = [r["id"] for r in await gw.store.rows(TABLE, match)]
    if ids:
        label = target.label if target else "system"
        log = gw.oplog(
            caller,
            "delete_news",
            target.account.id if target else 0,
            f"deleted {len(ids)} news for {label}",
        )
        await gw.changes.commit(lambda: (None, [o.RowDelete(TABLE, {"id": o.In(tuple(ids))}), log]))
    return call.json({"success": True, "deleted": len(ids)})


async def delete_system(call):
    return await _delete(call, SYSTEM, None)


async def delete_targeted(call):
    target = resolve(call.gw.state, call.caller, call.param("target"))
    return await _delete(call, target.match(call.caller), target)


async def news_for(store, acc: Account, now: float) -> list[dict]:
    """Unexpired news for the account, or for a DNA group it is in, newest first."""
    # A DNA group contains the reader when it is a prefix of the reader's current DNA.
    parts = acc.dna.split(".")[1:-1]
    groups = tuple("." + ".".join(parts[:n]) + "." for n in range(1, len(parts) + 1))
    live = o.Gt(now)
    rows = await store.rows(TABLE, {"target_id": acc.id, "expires_at": live}, NEWEST, LIMIT)
    rows += await store.rows(TABLE, {"target_dna": o.In(groups), "expires_at": live}, NEWEST, LIMIT)
    rows.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
    return rows[:LIMIT]


async def user_news(call):
    acc, store, now = call.caller, call.gw.store, time.time()
    system = await store.rows(TABLE, SYSTEM | {"expires_at": o.Gt(now)}, NEWEST, LIMIT)
    mine = await news_for(store, acc, now)
    return call.json(
        {
            "success": True,
            "system_news": [_item(r) for r in system],
            "user_news": [_item(r) for r in mine],
        }
    )


async def _seed_ids(gw) -> None:
    """News ids continue after the highest stored one (ids are allocated in memory)."""
    last = await gw.store.rows(TABLE, order=("-id",), limit=1)
    gw.state.seed_id(TABLE, last[0]["id"] if last else 0)


def setup(gw) -> None:
    gw.migrations(NEWS)
    gw.on_startup(lambda: _seed_ids(gw))
    tag = "news"
    gw.route(
        "POST",
        "/x-news",
        create_system,
        summary="Publish system-wide news (root only; default 7 days)",
        body=NEWS_BODY,
        root_only=True,
        tag=tag,
    )
    gw.route(
        "POST",
        "/x-news/{target}",
        create_targeted,
        summary="Publish news for an account or DNA group below you (default 32 days)",
        body=NEWS_BODY,
        tag=tag,
    )
    gw.route(
        "DELETE",
        "/x-news",
        delete_system,
        summary="Delete all system news (root only)",
        body=NO_BODY,
        root_only=True,
        tag=tag,
    )
    gw.route(
        "DELETE",
        "/x-news/{target}",
        delete_targeted,
        summary="Delete the news you published for an account or DNA group",
        body=NO_BODY,
        tag=tag,
    )
    gw.route(
        "GET",
        "/dashboard/x-user-news",
        user_news,
        summary="Unexpired system news and news for you or a group you belong to",
        tag=tag,
    )
