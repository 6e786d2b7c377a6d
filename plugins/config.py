"""Owner configuration: GET/PUT/POST/DELETE /x-config, the /x-conf overview, and the
POST /x-conf cascade of account settings (`_cascade.py`) (owners only).

The overview also shows each key's recent failed upstream attempts (status or network
outcome, with the time), kept in memory by this instance from the data plane's
`on_request_end` hook: the last few per key, so an owner sees why a key misbehaves
before it is put to sleep.
"""

from __future__ import annotations

import time
from collections import deque

from xaiproxy import ownerconf, ssrf
from xaiproxy.api import ApiError

from . import _cascade
from ._userfields import iso
from .keys import public as public_key

UPDATE_BODY = {
    "type": "object",
    "properties": {k: {} for k in ownerconf.KEYS},
    "minProperties": 1,
    "additionalProperties": False,
}
DELETE_BODY = {
    "type": "object",
    "properties": {
        "keys": {
            "type": "array",
            "items": {"type": "string", "enum": list(ownerconf.KEYS)},
            "minItems": 1,
            "maxItems": len(ownerconf.KEYS),
        }
    },
    "required": ["keys"],
    "additionalProperties": False,
}


FAILURES_KEPT = 10  # per key
RETRYABLE = frozenset({401, 403, 429})  # with every 5xx and every network outcome


class KeyFailures:
    """The last FAILURES_KEPT failed attempts of each provider key: (time, outcome)."""

    def __init__(self) -> None:
        self.by_key: dict[int, deque] = {}

    def observe(self, ctx) -> None:
        for key_id, _level, outcome in ctx.attempt_log or ():
            if not isinstance(outcome, int) or outcome >= 500 or outcome in RETRYABLE:
                kept = self.by_key.get(key_id)
                if kept is None:
                    kept = self.by_key[key_id] = deque(maxlen=FAILURES_KEPT)
                kept.append((time.time(), str(outcome)))

    def of(self, keys) -> dict:
        """{key id: [{"at", "outcome"}, ...] oldest first} for the keys that failed lately."""
        return {
            k.id: [{"at": iso(at), "outcome": outcome} for at, outcome in self.by_key[k.id]]
            for k in keys
            if k.id in self.by_key
        }

    def forget(self, live_ids) -> None:
        for key_id in [k for k in self.by_key if k not in live_ids]:
            del self.by_key[key_id]


def _answer(call, cfg) -> dict:
    return {"success": True, "oid": cfg.owner_id, "version": cfg.version, "configs": cfg.public()}


async def get_config(call):
    return call.json(_answer(call, call.gw.config(call.caller.id)))


async def update_config(call):
    gw, caller = call.gw, call.caller
    values = _applied(gw, caller, call.body)
    if not caller.is_root and call.body.keys() & {"EMAIL_SMTP", "EMAIL_PORT"}:
        await check_mail_server(gw, caller, values)
        # Apply to the config as it is now: an update that landed during the check stays.
        values = _applied(gw, caller, call.body)
    log = gw.oplog(caller, "update_config", caller.id, "set " + ", ".join(sorted(call.body)))
    cfg = await gw.save_config(caller.id, values, [log])
    return call.json(_answer(call, cfg))


def _applied(gw, caller, batch: dict) -> dict:
    try:
        return ownerconf.apply_batch(gw.config(caller.id).values, batch)
    except ValueError as exc:
        raise ApiError(400, "invalid_config", str(exc)) from None


async def check_mail_server(gw, caller, values: dict) -> None:
    """A tenant's SMTP server: a public host (the provider SSRF rule) on a mail port."""
    port = values.get("EMAIL_PORT")
    if port is not None and port not in ownerconf.MAIL_PORTS:
        ports = ", ".join(map(str, ownerconf.MAIL_PORTS))
        raise ApiError(400, "invalid_config", f"EMAIL_PORT must be one of {ports}")
    host = values.get("EMAIL_SMTP")
    if not host or not ssrf.restricted(caller.is_root, gw.settings):
        return
    private = await ssrf.resolves_private(host, gw.resolver)
    if private is None:
        raise ApiError(400, "invalid_config", f"cannot resolve the EMAIL_SMTP host {host[:100]!r}")
    if private:
        raise ApiError(
            400,
            "invalid_config",
            "EMAIL_SMTP must be a public mail server; only root may use a loopback or"
            " private address",
        )


async def delete_config(call):
    gw, caller = call.gw, call.caller
    keys = call.body["keys"]
    values = {k: v for k, v in gw.config(caller.id).values.items() if k not in keys}
    log = gw.oplog(caller, "delete_config", caller.id, "reset " + ", ".join(sorted(keys)))
    cfg = await gw.save_config(caller.id, values, [log])
    return call.json({**_answer(call, cfg), "deleted": sorted(keys)})


def overview(failures: KeyFailures):
    async def handler(call):
        failures.forget(call.gw.state.keys)  # deleted keys
        return await _overview(call, failures)

    handler.__name__ = "overview"
    return handler


async def _overview(call, failures: KeyFailures):
    gw, caller = call.gw, call.caller
    cfg = gw.config(caller.id)
    now = time.time()
    keys = sorted(gw.state.owner_keys(caller.id), key=lambda k: k.id)
    levels: dict[int, dict] = {}
    for key in keys:
        row = levels.setdefault(key.level, {"total": 0, "enabled": 0, "awake": 0})
        row["total"] += 1
        row["enabled"] += key.status
        row["awake"] += key.awake(now)
    return call.json(
        {
            **_answer(call, cfg),
            "keys": [public_key(k, now) for k in keys],
            "sleeping": [k.id for k in keys if k.sleep_until > now],
            "disabled": [k.id for k in keys if not k.status],
            "failures": failures.of(keys),
            "levels": levels,
            "UserMinBalance": cfg.number("USER_MIN_BALANCE"),
            "UserApiBalance": cfg.number("USER_API_BALANCE"),
            "LowBalance": cfg.number("LOW_BALANCE"),
        }
    )


def setup(gw) -> None:
    failures = KeyFailures()
    gw.hooks.on_request_end.append(failures.observe)
    opts = {"owner_only": True, "tag": "config"}
    gw.route("GET", "/x-config", get_config, summary="The owner's config", **opts)
    for method in ("PUT", "POST"):
        gw.route(
            method,
            "/x-config",
            update_config,
            summary="Update config keys (all or nothing)",
            body=UPDATE_BODY,
            **opts,
        )
    gw.route(
        "DELETE",
        "/x-config",
        delete_config,
        summary="Restore config keys to defaults",
        body=DELETE_BODY,
        **opts,
    )
    gw.route(
        "GET",
        "/x-conf",
        overview(failures),
        summary="Owner overview: config, keys and their state (sleeping, recent failures), thresholds",
        **opts,
    )
    gw.route(
        "POST",
        "/x-conf",
        _cascade.cascade,
        summary="Push ModelMapper, LevelMapper, ModelLimits, Resources, AllowLevels down to"
        " every descendant (all or nothing)",
        body=_cascade.BODY,
        **opts,
    )
