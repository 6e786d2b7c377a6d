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

from xaiproxy.api import ApiError
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
SYSTEM = o.NewsMatch()  # what root's DELETE /x-news removes
_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Target:
    """Whom a targeted news item is for: one account, or a DNA group (account + subtree)."""

    __slots__ = ("account", "dna")

    def __init__(self, account: Account, dna: str | None) -> None:
        self.account, self.dna = account, dna

    @property
    def label(self) -> str:
        return f"group {self.dna}" if self.dna else f"account {self.account.id}"

    def match(self, author: Account) -> o.NewsMatch:
        if self.dna:
            return o.NewsMatch(author.id, target_dna=self.dna)
        return o.NewsMatch(author.id, target_id=self.account.id)


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
    if await call.gw.store.news_live(call.caller.id, now) >= MAX_LIVE:
        raise _full()


def _full() -> ApiError:
    return ApiError(
        403,
        "news_limit_reached",
        f"you have {MAX_LIVE} unexpired news items; delete some before publishing more",
    )


def _lock(gw) -> asyncio.Lock:
    """One news write at a time per gateway: a count then a write must not interleave."""
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
    await gw.store.write(
        [
            o.NewsPrune(now),
            o.NewsPut(
                news_id,
                caller.id,
                target_id,
                target_dna,
                body["title"],
                body["content"],
                now,
                expires,
                max_live=MAX_LIVE,  # counted again in the writer, whatever a reader saw
            ),
            gw.oplog(
                caller,
                "create_news",
                target.account.id if target else 0,
                f"news {news_id} for {label}: {body['title'][:100]}",
            ),
        ]
    )
    if not await gw.store.news_exists(news_id):
        raise _full()
    item = {"id": news_id, "title": body["title"], "content": body["content"]}
    item |= {"target": label, "created_at": iso(now), "expires_at": iso(expires)}
    return call.json({"success": True, "news": item}, status=201)


async def create_system(call):
    return await _create(call, None, SYSTEM_DAYS)


async def create_targeted(call):
    target = resolve(call.gw.state, call.caller, call.param("target"))
    return await _create(call, target, TARGETED_DAYS)


async def _delete(call, match: o.NewsMatch, target: Target | None):
    gw, caller = call.gw, call.caller
    ids = await gw.store.news_ids(match)
    if ids:
        label = target.label if target else "system"
        await gw.store.write(
            [
                o.NewsDelete(tuple(ids)),
                gw.oplog(
                    caller,
                    "delete_news",
                    target.account.id if target else 0,
                    f"deleted {len(ids)} news for {label}",
                ),
            ]
        )
    return call.json({"success": True, "deleted": len(ids)})


async def delete_system(call):
    return await _delete(call, SYSTEM, None)


async def delete_targeted(call):
    target = resolve(call.gw.state, call.caller, call.param("target"))
    return await _delete(call, target.match(call.caller), target)


async def user_news(call):
    acc, store, now = call.caller, call.gw.store, time.time()
    system = await store.news_system(now, LIMIT)
    mine = await store.news_for(acc.id, acc.dna, now, LIMIT)
    return call.json(
        {
            "success": True,
            "system_news": [_item(r) for r in system],
            "user_news": [_item(r) for r in mine],
        }
    )


def setup(gw) -> None:
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
