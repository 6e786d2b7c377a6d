"""POST /x-conf: an owner's batch of account settings pushed down to every descendant.

The batch (ModelMapper, LevelMapper, ModelLimits, Resources, AllowLevels) is applied to
each descendant's own settings with the rules of `PUT /x-users` (whitelist edits apply
to each account's current list, ModelLimits merge, mappers are set whole). It is
validated for every account before anything changes, and applied and stored as one
unit with one op-log entry (`cascade_config`); one refusal refuses it all.
"""

from __future__ import annotations

from xaiproxy import idempotency
from xaiproxy.api import ApiError
from xaiproxy.state import Account

from . import _userfields as uf

FIELDS = ("ModelMapper", "LevelMapper", "ModelLimits", "Resources", "AllowLevels")
BODY = {
    "type": "object",
    "properties": {f: uf.FIELDS[f] for f in FIELDS},
    "minProperties": 1,
    "additionalProperties": False,
}


def reach(state, owner: Account) -> list[Account]:
    """The owner's descendants it owns: a tenant's subtree has its own owner and config."""
    return sorted((a for a in state.subtree(owner) if a.owner_acc is owner), key=lambda a: a.id)


def plan(gw, owner: Account, body: dict) -> list[tuple[Account, dict]]:
    """Each account's new values; the first refusal (400, naming the account) refuses all."""
    state = gw.state
    uf.Edit(
        owner, owner, owner, body, state
    ).values()  # the values' syntax, with or without descendants
    out = []
    for acc in reach(state, owner):
        try:
            out.append((acc, uf.Edit(owner, acc.parent, acc, body, state).values()))
        except ApiError as exc:
            raise ApiError(exc.status, exc.code, f"{acc.name}: {exc.message}") from None
    return out


async def cascade(call):
    gw, owner, body = call.gw, call.caller, call.body

    def work():
        planned = plan(gw, owner, body)
        ops: list = []
        for acc, values in planned:
            gw.changes.keep(acc, set(values))
            ops += gw.changes.update(acc, values)
        fields = ", ".join(sorted(body))
        detail = f"set {fields} on {len(planned)} descendants"
        ops.append(gw.oplog(owner, "cascade_config", owner.id, detail))
        answer = {
            "success": True,
            "oid": owner.id,
            "fields": sorted(body),
            "accounts": [acc.id for acc, _ in planned],
        }
        return answer, ops, 200

    return await idempotency.guard(gw).run(call.request, owner.id, body, work)
