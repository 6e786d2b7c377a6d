"""Key rotation: POST /x-self (any account, its own key) and POST /x-root (root, any account).

The new key is shown once in the answer; the old one fails on the very next request
(the in-memory key index changes before the answer leaves). The op log never holds a key.
"""

from __future__ import annotations

from datetime import UTC, datetime

from xaiproxy import credentials
from xaiproxy.api import NO_QUERY, ApiError
from xaiproxy.state import Account

_confirm = {"type": "string", "maxLength": 64}
SELF_BODY = {
    "type": "object",
    "properties": {"confirm": _confirm},
    "required": ["confirm"],
    "additionalProperties": False,
}
ROOT_BODY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 254},
        "key": {"type": "string", "maxLength": 128},
        "confirm": _confirm,
    },
    "required": ["confirm"],
    "additionalProperties": False,
}


def check_confirm(given: str, suffix: str) -> None:
    """The caller types today's UTC date + suffix, so a rotation is never an accident."""
    want = datetime.now(UTC).strftime("%Y-%m-%d") + suffix
    if given.strip() != want:
        raise ApiError(400, "confirm_mismatch", f"send confirm = {want!r} to rotate the key")


def new_key(state, given: str | None) -> str:
    if given is None:
        return credentials.generate_key()
    if not credentials.is_client_key(given):
        raise ApiError(
            400, "invalid_key", "key must be 'sk-Xvs' followed by 45 characters of A-Z a-z 0-9 - _"
        )
    if credentials.hash_key(given) in state.by_key:
        raise ApiError(409, "already_exists", "that key is already in use; choose another")
    return given


async def rotate(gw, operator: Account, acc: Account, key: str, action: str):
    """Swap acc's key in memory (the old one stops at once), then persist with the op log row."""
    log = gw.oplog(operator, action, acc.id, f"rotated the key of {acc.name}")
    await gw.changes.commit(lambda: (None, [*gw.changes.rotate(acc, key), log]))
    now = acc.updated_at
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"action": action, "id": acc.id, "name": acc.name, "key": key, "timestamp": stamp}


async def rotate_self(call):
    check_confirm(call.body["confirm"], "-ROTATE-SELF")
    done = await rotate(
        call.gw, call.caller, call.caller, credentials.generate_key(), "rotate_self"
    )
    return call.json({"success": True, "message": "Self key rotated successfully", "rotate": done})


async def rotate_root(call):
    body, state = call.body, call.gw.state
    check_confirm(body["confirm"], "-ROTATE-ROOT")
    ident = body.get("name", "root")
    acc = state.find(ident)
    if acc is None:
        raise ApiError(404, "not_found", f"account {ident[:64]!r} not found")
    key = new_key(state, body.get("key"))
    done = await rotate(call.gw, call.caller, acc, key, "rotate_root")
    message = f"Key of {acc.name} rotated successfully"
    return call.json({"success": True, "message": message, "rotate": done})


def setup(gw) -> None:
    gw.route(
        "POST",
        "/x-self",
        rotate_self,
        summary="Rotate your own key (confirm = today's UTC date + '-ROTATE-SELF')",
        body=SELF_BODY,
        query=NO_QUERY,
        tag="rotation",
    )
    gw.route(
        "POST",
        "/x-root",
        rotate_root,
        summary="Root: set or rotate any account's key (confirm = date + '-ROTATE-ROOT')",
        body=ROOT_BODY,
        query=NO_QUERY,
        root_only=True,
        tag="rotation",
    )
