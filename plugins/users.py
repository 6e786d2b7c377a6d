"""Subaccounts: POST/PUT/GET/DELETE /x-users and GET /x-dna.

Every change runs as one synchronous check-then-mutate step (`work`) that returns
its store ops; the idempotency guard persists them, with the op log row and the
Idempotency-Key record, as one unit. Money moves only through `xaiproxy.ledger`:
the target's parent pays for a recharge and receives a refund.
"""

from __future__ import annotations

import time

from xaiproxy import credentials, idempotency, ledger
from xaiproxy.api import NO_QUERY, ApiError
from xaiproxy.state import FILTER_RE, Account

from . import _sendkey
from . import _userfields as uf
from ._paging import PAGING_QUERY, page

_ident = {"type": "string", "maxLength": 254}
LIST_QUERY = {
    "type": "object",
    "properties": {
        **PAGING_QUERY,
        "id": {"type": "string", "maxLength": 30},
        "name": _ident,
        "email": _ident,
        "level": {"type": "string", "pattern": "^L?[0-9]{1,4}$"},
        "dna": {"type": "string", "maxLength": 4096},
    },
    "additionalProperties": False,
}


def single(state, caller: Account, ident: str) -> Account:
    if FILTER_RE.fullmatch(ident.strip()):
        raise uf.bad(f"{ident!r} is a filter; this call takes one ID, Name or Email")
    return state.descendant(caller, ident)


async def guarded(call, body, work):
    """Run work() under the Idempotency-Key guard, if the caller still exists by then."""
    gw, caller = call.gw, call.caller

    def checked():
        # The caller may have been deleted while this request was being read.
        if gw.state.accounts.get(caller.id) is not caller:
            raise ApiError(401, "invalid_api_key", "the calling account no longer exists")
        return work()

    return await idempotency.guard(gw).run(call.request, caller.id, body, checked)


# -- create ------------------------------------------------------------------
async def create(call):
    call.require_api_balance()
    gw, caller, body = call.gw, call.caller, call.body
    mail: list = []  # what SendKey mails once the account is stored

    def work():
        if not caller.is_root and len(caller.children) >= caller.child_limit:
            raise ApiError(
                403,
                "child_limit_reached",
                f"this account may have at most {caller.child_limit} direct subaccounts",
            )
        values = uf.Edit(caller, caller, None, body, gw.state).values()
        amount = ledger.check_amount(body["CreditGranted"])
        least = gw.config(caller.owner_acc.id).number("USER_MIN_BALANCE")
        if amount < least:
            raise uf.bad(f"CreditGranted must be at least {least:g}", "invalid_amount")
        if body.get("SendKey"):
            _sendkey.check(gw, caller.owner_acc)
        answer, ops, status = _add(gw, caller, body, values, amount)
        if body.get("SendKey"):
            user = answer["User"]
            mail[:] = [user["ID"], values["name"], values["email"], user["SecretKey"]]
        return answer, ops, status

    response = await guarded(call, body, work)
    if mail:  # stored (a replay runs no work and mails nothing)
        _sendkey.send(gw, caller.owner_acc, *mail)
    return response


def _add(gw, caller: Account, body: dict, values: dict, amount: float):
    now = time.time()
    key = credentials.generate_key()
    fields = {"rates": caller.rates, "alias": values["name"]} | values
    acc = Account(
        id=gw.state.next_id("accounts"),
        key_hash=credentials.hash_key(key),
        key_prefix=credentials.display_prefix(key),
        dna="",
        level=0,
        parent_id=caller.id,
        credit_granted=amount,
        created_at=now,
        updated_at=now,
        **fields,
    )
    money_ops = gw.ledger.fund(caller, acc, amount, _days(body), caller, "initial")
    details = f"created user {acc.name} ({acc.email}) with CreditGranted {amount:g}"
    if body.get("SendKey"):
        details += "; key sent by email"
    ops = [*gw.changes.create(acc), *money_ops, gw.oplog(caller, "add_user", acc.id, details)]
    shown = uf.updates(values) | {"CreditGranted": amount, "Balance": ledger.balance(acc)}
    if body.get("SendKey"):
        shown["SendKey"] = True
    answer = {
        "Action": "add",
        "User": {"ID": acc.id, "SecretKey": key, "Updates": shown},
        "Parent": uf.money(caller),
    }
    return answer, ops, 200


def _days(body: dict) -> float | None:
    days = body.get("Days")
    return None if not days else float(days)


# -- update ------------------------------------------------------------------
async def update(call):
    gw, caller, body = call.gw, call.caller, call.body
    if not _pure_refund(body):
        call.require_api_balance()
    ident = call.param("ident")

    def work():
        acc = single(gw.state, caller, ident)
        edit = uf.Edit(caller, acc.parent, acc, body, gw.state)
        values = edit.values()
        amount = ledger.check_amount(body.get("CreditGranted", 0))
        if "Days" in body and amount <= 0:
            raise uf.bad("Days goes with a positive CreditGranted (a recharge)")
        return _change(gw, caller, acc, body, values, amount, edit)

    return await guarded(call, body, work)


def _pure_refund(body: dict) -> bool:
    amount = body.get("CreditGranted")
    return set(body) == {"CreditGranted"} and isinstance(amount, int | float) and amount < 0


def _change(gw, caller: Account, acc: Account, body: dict, values: dict, amount: float, edit):
    if not values and not amount:
        raise uf.bad("nothing to change: send the fields to update, or a non-zero CreditGranted")
    gw.changes.keep(acc, {*values, "rates", "credit_granted", "hard_limit", "soft_limit"})
    ops, extra = _move(gw, caller, acc, body, values, amount)
    if values:
        changed = ", ".join(sorted(uf.updates(values)))
        ops.append(gw.oplog(caller, "update_user", acc.id, f"changed {changed}"))
    _follow_credit(acc, amount, values, edit.hard_cap(values.get("rates", acc.rates)))
    ops[:0] = gw.changes.update(acc, values | {"credit_granted": acc.credit_granted})
    user = {"ID": acc.id, "Updates": uf.updates(values) | extra}
    return {"Action": "update", "User": user, "Parent": uf.money(acc.parent)}, ops, 200


def _move(gw, caller: Account, acc: Account, body: dict, values: dict, amount: float):
    """The recharge or refund of an update, in the account's new Rates; ([], {}) when none."""
    if not amount:
        return [], {}
    parent, rates = acc.parent, values.get("rates", acc.rates)
    if amount > 0:
        ops = gw.ledger.fund(parent, acc, amount, _days(body), caller, "recharge", rates)
        ops.append(gw.oplog(caller, "recharge_user", acc.id, f"recharged {amount:g}"))
        extra = {}
    else:
        ops, back = gw.ledger.refund(acc, parent, -amount, caller, "refund", rates)
        detail = f"refunded {-amount:g}; the parent received {back:g} after the fee"
        ops.append(gw.oplog(caller, "refund_user", acc.id, detail))
        extra = {"Refunded": back}
    balance = ledger.from_n(ledger.balance_n(acc), rates)
    return ops, extra | {"CreditGranted": amount, "Balance": balance}


def _follow_credit(acc: Account, amount: float, values: dict, cap: float | None) -> None:
    """CreditGranted counts what was granted, less refunds. While AutoQuota is on, a
    recharge, a refund or turning it on sets HardLimit = 10 x CreditGranted (up to the
    parent's HardLimit) and SoftLimit = 0.8 x HardLimit."""
    acc.credit_granted = max(acc.credit_granted + amount, 0.0)
    if values.get("auto_quota", acc.auto_quota) and (amount or values.get("auto_quota")):
        hard = 10 * acc.credit_granted
        values["hard_limit"] = hard if cap is None else min(hard, cap)
        values["soft_limit"] = 0.8 * values["hard_limit"]


# -- delete ------------------------------------------------------------------
async def delete(call):
    gw, caller = call.gw, call.caller
    ident = call.param("ident")

    def work():
        acc = single(gw.state, caller, ident)
        return _remove(gw, caller, acc)

    return await guarded(call, None, work)


def _remove(gw, caller: Account, acc: Account):
    """Refund the balance (less reservations) to the parent, re-attach the children, drop it."""
    parent = acc.parent
    ops, back = gw.ledger.leave(acc, caller)
    removed, moved = gw.changes.delete(acc)
    ops += removed
    details = f"deleted user {acc.name}; parent received {back:g}; {len(moved)} accounts moved up"
    ops.append(gw.oplog(caller, "delete_user", acc.id, details))
    user = {"ID": acc.id, "Name": acc.name, "Refunded": back, "Moved": [m.id for m in moved]}
    return {"Action": "delete", "User": user, "Parent": uf.money(parent)}, ops, 200


# -- read --------------------------------------------------------------------
def _matches(acc: Account, query: dict) -> bool:
    if query.get("id") and str(acc.id) != query["id"].strip():
        return False
    if query.get("name") and acc.name.lower() != query["name"].strip().lower():
        return False
    if query.get("email") and acc.email.lower() != query["email"].strip().lower():
        return False
    if query.get("level") and acc.level != int(query["level"].lstrip("L")):
        return False
    return not (query.get("dna") and not acc.dna.startswith(query["dna"].strip()))


def _special(state, caller: Account, query: dict) -> list[Account] | None:
    """A special filter value (L2, G1, ...) in any of id/name/email; None when there is none."""
    for field in ("id", "name", "email"):
        picked = state.select(caller, query.get(field) or "")
        if picked is not None:
            return picked
    return None


def search(state, caller: Account, query: dict, children_only: bool) -> list[Account]:
    picked = _special(state, caller, query)
    if picked is not None:
        query = {k: v for k, v in query.items() if k in ("level", "dna")}
    elif any(query.get(k) for k in ("id", "name", "email", "level", "dna")):
        picked = state.subtree(caller)
    else:
        picked = list(caller.children.values()) if children_only else state.subtree(caller)
    return sorted((a for a in picked if _matches(a, query)), key=lambda a: a.id)


def answer_list(call, accounts: list[Account]):
    items, headers = page(accounts, call.query)
    return call.json([uf.view(a) for a in items], headers=headers)


async def list_users(call):
    return answer_list(call, search(call.gw.state, call.caller, call.query, children_only=True))


async def list_dna(call):
    return answer_list(call, search(call.gw.state, call.caller, call.query, children_only=False))


async def get_user(call):
    state, ident = call.gw.state, call.param("ident")
    picked = state.select(call.caller, ident)
    if picked is not None:
        return answer_list(call, sorted(picked, key=lambda a: a.id))
    page([], call.query)  # paging is checked even when one account answers
    return call.json(uf.view(state.descendant(call.caller, ident)))


async def get_branch(call):
    """/x-dna/{ident}: the named account and everything below it (or a filter's matches)."""
    state, ident = call.gw.state, call.param("ident")
    picked = state.select(call.caller, ident)
    if picked is None:
        acc = state.descendant(call.caller, ident)
        picked = [acc, *state.subtree(acc)]
    return answer_list(call, sorted(picked, key=lambda a: a.id))


def setup(gw) -> None:
    idempotency.guard(gw)
    gw.on_shutdown(_sendkey.drain)
    tag = "users"
    gw.route(
        "POST",
        "/x-users",
        create,
        summary="Create a subaccount",
        body=uf.CREATE_BODY,
        query=NO_QUERY,
        tag=tag,
    )
    gw.route(
        "PUT",
        "/x-users/{ident}",
        update,
        summary="Update, recharge (CreditGranted > 0) or refund (< 0) a subaccount",
        body=uf.UPDATE_BODY,
        query=NO_QUERY,
        tag=tag,
    )
    gw.route(
        "DELETE",
        "/x-users/{ident}",
        delete,
        summary="Delete a subaccount: refund its balance, move its children up",
        query=NO_QUERY,
        tag=tag,
    )
    gw.route(
        "GET", "/x-users", list_users, summary="List direct subaccounts", query=LIST_QUERY, tag=tag
    )
    gw.route(
        "GET",
        "/x-users/{ident}",
        get_user,
        summary="One subaccount (or a filter's matches)",
        query=LIST_QUERY,
        tag=tag,
    )
    gw.route("GET", "/x-dna", list_dna, summary="List every descendant", query=LIST_QUERY, tag=tag)
    gw.route(
        "GET",
        "/x-dna/{ident}",
        get_branch,
        summary="A descendant and its whole branch",
        query=LIST_QUERY,
        tag=tag,
    )
