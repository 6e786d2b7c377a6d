"""GET /x-bill: usage of the caller's subtree by day and model, and by account.

Scope: the caller and every account below it (the caller's own usage is included, so
a reseller sees its whole book in one report). `u|user` narrows it: an ID, name or
email selects that account and its subtree (what that account's own /x-bill would
show); a filter (L2, G1, R0, T3, F1.5) selects exactly the matching accounts below
the caller. Anything outside the caller's subtree is 404. Costs are in the caller's
units (see _reports). `usage_users` lists the `MAX_USERS` costliest accounts; the
rest are one row with `"name": "others"` and `"accounts"` (how many it sums).
"""

from __future__ import annotations

from xaiproxy.state import Account

from . import _reports as reports

BILL_QUERY = {
    "type": "object",
    "properties": {
        "u": {"type": "string", "minLength": 1, "maxLength": 320},
        "user": {"type": "string", "minLength": 1, "maxLength": 320},
        **reports.DATE_QUERY,
    },
    "additionalProperties": False,
}


def scope_for(gw, caller: Account, ident: str | None) -> reports.Scope:
    """The usage rows `u|user` names, within the caller's subtree (404 outside it)."""
    if ident is None:
        return reports.subtree_scope(gw.state, caller)
    selected = gw.state.select(caller, ident)
    if selected is not None:
        return reports.accounts_scope([a.id for a in selected])
    if gw.state.find(ident) is caller:
        return reports.subtree_scope(gw.state, caller)
    return reports.subtree_scope(gw.state, gw.state.descendant(caller, ident))


def _user_row(gw, account_id: int, requests: int, cost: float, total: dict) -> dict:
    acc = gw.state.accounts.get(account_id)  # None once deleted: its history stays
    return {
        "id": account_id,
        "name": acc.name if acc else "",
        "email": acc.email if acc else "",
        "total_requests": requests,
        "total_cost": cost,
        "usage_analysis": {
            "request_percentage": reports.percent(requests, total["requests"]),
            "cost_percentage": reports.percent(cost, total["cost"]),
        },
    }


async def bill(call):
    gw, caller = call.gw, call.caller
    scope = scope_for(gw, caller, reports.pick(call.query, "u", "user"))
    span = reports.parse_range(call.query)
    report = await reports.by_day(gw.usage, scope, span, caller.rates)
    total = report["total_usage"]
    rows = await reports.by_account(gw.usage, scope, span)
    users = [
        _user_row(gw, aid, requests, reports.money(cost_n, caller.rates), total)
        for aid, requests, cost_n in rows[: reports.MAX_USERS]
    ]
    if rest := rows[reports.MAX_USERS :]:
        cost = reports.money(sum(r[2] for r in rest), caller.rates)
        others = _user_row(gw, 0, sum(r[1] for r in rest), cost, total)
        users.append({**others, "id": None, "name": reports.OTHERS, "accounts": len(rest)})
    return call.json({"object": "list", **report, "usage_users": users})


def setup(gw) -> None:
    gw.route(
        "GET",
        "/x-bill",
        bill,
        summary="Usage of your subtree by day, model and account (default: this month)",
        query=BILL_QUERY,
        tag="billing",
    )
