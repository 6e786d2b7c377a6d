"""/dashboard/*: an account's own status, details, usage and operation logs.

Every caller may read its own dashboard (no balance threshold). Nothing here names
another account, so there is nothing to scope but "me".

Logs: an account sees the operations it made, and the operations made on it by
an ancestor (its creation, updates, recharges, key rotations, news for it). Only
actions whose target is an account count for the second part, so a provider key
that happens to share an account's ID never leaks its log to that account. A
child never sees what its parent did to anyone else.
"""

from __future__ import annotations

from datetime import UTC, datetime

from xaiproxy.api import ApiError, months

from . import _reports as reports
from . import _userfields as uf

# Actions whose target_id is an account ID (key and config actions target other things).
ACCOUNT_ACTIONS = (
    "add_user",
    "update_user",
    "recharge_user",
    "refund_user",
    "delete_user",
    "rotate_self",
    "rotate_root",
    "create_news",
    "delete_news",
    "cascade_config",
)
USER_FIELDS = ("ID", "Name", "Email", "Alias", "BillingEmail", "ParentID", "DNA", "Level")
USER_FIELDS += (
    "Status",
    "Suspended",
    "Owner",
    "Rates",
    "Factor",
    "Gear",
    "Role",
    "Tier",
    "PartialKey",
)
USER_FIELDS += ("CreditGranted", "CreatedAt", "UpdatedAt")
LIMIT_FIELDS = ("HardLimit", "SoftLimit", "RPM", "RPH", "RPD", "TPM", "TPH", "TPD")
LIMIT_FIELDS += ("AutoQuota", "ModelLimits", "ChildLimit")
MAPPER_FIELDS = ("ModelMapper", "LevelMapper")
LIST_FIELDS = ("AllowIPs", "AllowModels", "Resources", "AllowLevels")
BILL_QUERY = {"type": "object", "properties": reports.DATE_QUERY, "additionalProperties": False}
_NUMBER = {"type": "string", "pattern": "^[0-9]{1,9}$"}
LOGS_QUERY = {
    "type": "object",
    "properties": {
        "page": _NUMBER,
        "size": _NUMBER,
        "action": {"type": "string", "pattern": "^[a-z_]{1,40}$"},
        "target_id": {"type": "string", "pattern": "^[0-9]{1,18}$"},
        "status": {"type": "string", "pattern": "^[a-z_]{1,20}$"},
    },
    "additionalProperties": False,
}


async def user_status(call):
    acc = call.caller
    return call.json(
        {
            "object": "user_status",
            "id": acc.id,
            "name": acc.name,
            "email": acc.email,
            "balance": uf.balance(acc),  # None for root: unlimited
            "dna": acc.dna,
        }
    )


async def user_info(call):
    acc, reader = call.caller, call.gw.usage
    view = uf.view(acc)
    usage = {
        "today": await reports.totals(reader, acc.id, reports.day_start(), acc.rates),
        "month": await reports.totals(reader, acc.id, months.start()[1], acc.rates),
    }
    return call.json(
        {
            "object": "user_info",
            "user": {f: view[f] for f in USER_FIELDS} | {"Children": len(acc.children)},
            "balance": {"Balance": view["Balance"], "CreditBalance": view["CreditBalance"]},
            "limits": {f: view[f] for f in LIMIT_FIELDS},
            "usage": usage,
            "whitelists": {f: view[f] for f in LIST_FIELDS},
            "mappers": {f: view[f] for f in MAPPER_FIELDS},
        }
    )


async def own_bill(call):
    acc = call.caller
    span = reports.parse_range(call.query)
    report = await reports.by_day(call.gw.usage, reports.account_scope(acc.id), span, acc.rates)
    return call.json({"object": "list", **report})


def _log_filter(query: dict) -> dict:
    return {
        name: int(query[name]) if name == "target_id" else query[name]
        for name in ("action", "target_id", "status")
        if query.get(name) is not None
    }


def _log_row(row) -> dict:
    ts = datetime.fromtimestamp(row["ts"], UTC)
    return {
        "id": row["id"],
        "action": row["action"],
        "operator_id": row["operator_id"],
        "target_id": row["target_id"],
        "details": row["details"],
        "status": row["status"],
        "created_at": ts.strftime("%Y-%m-%d %H:%M:%S"),
    }


async def user_logs(call):
    page, size = int(call.query.get("page") or 1), int(call.query.get("size") or 24)
    if page < 1 or not 1 <= size <= 100:
        raise ApiError(400, "invalid_paging", "page must be >= 1 and size 1-100")
    filters = _log_filter(call.query)
    total, rows = await call.gw.store.op_logs(
        call.caller.id, ACCOUNT_ACTIONS, filters, size, (page - 1) * size
    )
    logs = [_log_row(r) for r in rows]
    return call.json(
        {
            "logs": logs,
            "total": total,
            "page": page,
            "size": size,
            "has_more": (page - 1) * size + len(logs) < total,
        }
    )


def setup(gw) -> None:
    tag = "dashboard"
    gw.route(
        "GET",
        "/dashboard/x-user-status",
        user_status,
        summary="Your ID, name, email, balance and DNA",
        tag=tag,
    )
    gw.route(
        "GET",
        "/dashboard/x-user-info",
        user_info,
        summary="Your account: details, balance and grants, limits, usage, whitelists",
        tag=tag,
    )
    gw.route(
        "GET",
        "/dashboard/bill",
        own_bill,
        summary="Your own usage by day and model (default: this month)",
        query=BILL_QUERY,
        tag=tag,
    )
    gw.route(
        "GET",
        "/dashboard/x-user-logs",
        user_logs,
        summary="Operations you made or that were made on your account, newest first",
        query=LOGS_QUERY,
        tag=tag,
    )
