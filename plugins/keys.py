"""Provider keys: /x-gkey, /x-keys (owners only). Secrets are shown masked, never whole."""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

from yarl import URL

from xaiproxy import credentials, ssrf, vendors
from xaiproxy.api import ApiError
from xaiproxy.state import ProviderKey, is_id

from ._paging import PAGING_QUERY, page
from ._userfields import iso

SECRET_RE = re.compile(r"[\x21-\x7e]+")  # fullmatch: no trailing newline either
KEY_FIELDS = {
    "SecretKey": {
        "type": "string",
        "minLength": 20,
        "maxLength": 1024,
        "pattern": r"^[\x21-\x7e]+$",
    },
    "Name": {"type": "string", "maxLength": 100},
    "Level": {"type": "integer", "minimum": 0, "maximum": 99},
    "Provider": {"type": "string", "minLength": 8, "maxLength": 500},
    "Type": {"type": "string", "maxLength": 40},  # vendors.TYPES, checked with a clear error
    "Status": {"type": "boolean"},
    "Config": {"type": "object"},
}
ADD_BODY = {
    "type": "object",
    "properties": KEY_FIELDS,
    "required": ["SecretKey", "Level", "Provider"],
    "additionalProperties": False,
}
UPDATE_BODY = {
    "type": "object",
    "properties": KEY_FIELDS,
    "minProperties": 1,
    "additionalProperties": False,
}
LIST_QUERY = {
    "type": "object",
    "properties": {
        **PAGING_QUERY,
        "level": {"type": "string", "pattern": "^[0-9]{1,2}$"},
        "provider": {"type": "string", "maxLength": 500},
    },
    "additionalProperties": False,
}


def check_config(config: dict, current: dict) -> dict:
    try:
        return credentials.check_config(config, current)
    except ValueError as exc:
        raise ApiError(400, "invalid_config", str(exc)) from None


def _check_secret(body: dict) -> None:
    if "SecretKey" in body and not SECRET_RE.fullmatch(body["SecretKey"]):
        raise ApiError(400, "invalid_request", "SecretKey: printable ASCII without spaces")


def public(key: ProviderKey, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    return {
        "ID": key.id,
        "Name": key.name,
        "Level": key.level,
        "Provider": key.provider,
        "Type": key.type,
        "SecretKey": credentials.mask(key.secret),
        "Status": key.status,
        "Sleeping": key.sleep_until > now,
        "SleepUntil": iso(key.sleep_until) if key.sleep_until > now else None,
        "SleepReason": key.sleep_reason if key.sleep_until > now else "",
        "Config": credentials.mask_config(key.config),
        "CreatedAt": iso(key.created_at),
        "UpdatedAt": iso(key.updated_at),
    }


async def check_provider(gw, caller, url: str) -> str:
    """http(s) only; loopback/private targets only for root or with XAI_ALLOW_PRIVATE_PROVIDERS."""
    try:  # the data plane builds its URLs with yarl: what it cannot read is refused now
        parts = urlsplit(url.strip())
        parsed = URL(url.strip())
        parsed.host, parsed.port  # noqa: B018 (reading them is the check)
    except ValueError:
        raise ApiError(
            400, "invalid_provider", "Provider is not a valid URL (check the host name and port)"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(
            400, "invalid_provider", "Provider must be an http(s) URL like https://api.openai.com"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ApiError(
            400, "invalid_provider", "Provider must not carry credentials, a query or a fragment"
        )
    if not ssrf.restricted(caller.is_root, gw.settings):
        return url.strip().rstrip("/")
    private = await ssrf.resolves_private(parts.hostname, gw.resolver)
    if private is None:
        raise ApiError(
            400, "invalid_provider", f"cannot resolve the provider host {parts.hostname!r}"
        )
    if private:
        raise ApiError(
            403, "provider_not_allowed", "only root may use a loopback or private provider address"
        )
    return url.strip().rstrip("/")


def extend_level_mapper(cfg, key: ProviderKey) -> dict | None:
    """LEVEL_MAPPER entries for the key's model families that no existing mapping covers yet."""
    current = dict(cfg.values.get("LEVEL_MAPPER") or {})
    added = {}
    for pattern in vendors.families(key.type, key.provider):
        sample = pattern.rstrip("*") or pattern
        if cfg.level_mapper.lookup(sample) is None and pattern not in current:
            added[pattern] = key.level
    return {**current, **added} if added else None


def _owned(call, ident: str) -> ProviderKey:
    key = call.gw.state.keys.get(int(ident)) if is_id(ident) else None
    if key is None or key.owner_id != call.caller.id:
        raise ApiError(404, "not_found", f"key {ident[:40]!r} not found")
    return key


async def gkey(call):
    return call.json({"success": True, "key": credentials.generate_key()})


async def add_key(call):
    gw, body, caller = call.gw, call.body, call.caller
    _check_secret(body)
    config = check_config(body.get("Config", {}), {})
    provider = await check_provider(gw, caller, body["Provider"])
    key_type = vendors.check_type(body["Type"]) if "Type" in body else vendors.infer(provider)
    now = time.time()
    key = ProviderKey(
        id=gw.state.next_id("provider_keys"),
        owner_id=caller.id,
        provider=provider,
        secret=body["SecretKey"],
        name=body.get("Name", ""),
        level=body["Level"],
        status=body.get("Status", True),
        config=config,
        type=key_type,
        created_at=now,
        updated_at=now,
    )

    def work():
        ops = [
            *gw.changes.put_key(key),
            gw.oplog(caller, "add_key", key.id, f"level {key.level} {key.type} {provider}"),
        ]
        cfg = gw.config(caller.id)
        mapper = extend_level_mapper(cfg, key)
        if mapper is not None:
            ops += gw.set_config(caller.id, {**cfg.values, "LEVEL_MAPPER": mapper})[1]
        return mapper, ops

    mapper = await gw.changes.commit(work)
    return call.json(
        {"success": True, "Action": "add", "Key": public(key), "LevelMapper": mapper or {}},
        status=201,
    )


async def update_key(call):
    gw, body = call.gw, call.body
    key = _owned(call, call.param("id"))
    _check_secret(body)
    if "Config" in body:
        body = {**body, "Config": check_config(body["Config"], key.config)}
    provider = (
        await check_provider(gw, call.caller, body["Provider"]) if "Provider" in body else None
    )
    key_type = vendors.check_type(body["Type"]) if "Type" in body else None
    if gw.state.keys.get(key.id) is not key:
        # Deleted while the provider host was being resolved: never bring it back.
        raise ApiError(404, "not_found", f"key {key.id} not found")
    fields = {
        "Name": "name",
        "Level": "level",
        "Status": "status",
        "SecretKey": "secret",
        "Config": "config",
    }
    values = {attr: body[field] for field, attr in fields.items() if field in body}
    if provider:
        values["provider"] = provider
        values["type"] = key_type or vendors.infer(provider)  # a new host implies its vendor
    elif key_type:
        values["type"] = key_type
    changed = ", ".join(
        sorted(f for f in body if f != "SecretKey") + (["SecretKey"] if "SecretKey" in body else [])
    )
    log = gw.oplog(call.caller, "update_key", key.id, f"changed {changed}")
    await gw.changes.commit(lambda: (None, [*gw.changes.update_key(key, values), log]))
    return call.json({"success": True, "Action": "update", "Key": public(key)})


async def list_keys(call):
    gw, query = call.gw, call.query
    ident = call.param("id")
    keys = sorted(gw.state.owner_keys(call.caller.id), key=lambda k: k.id)
    if ident:
        if is_id(ident):
            return call.json(public(_owned(call, ident)))
        if ident[:1] == "L" and is_id(ident[1:]):
            keys = [k for k in keys if k.level == int(ident[1:])]
        else:
            keys = [k for k in keys if (urlsplit(k.provider).hostname or "") == ident.lower()]
    if "level" in query:
        keys = [k for k in keys if k.level == int(query["level"])]
    if "provider" in query:
        want = query["provider"].rstrip("/")
        keys = [k for k in keys if k.provider == want or urlsplit(k.provider).hostname == want]
    now = time.time()
    items, headers = page([public(k, now) for k in keys], query)
    return call.json(items, headers=headers)


async def delete_key(call):
    gw = call.gw
    key = _owned(call, call.param("id"))
    log = gw.oplog(call.caller, "delete_key", key.id, f"level {key.level} {key.provider}")
    await gw.changes.commit(lambda: (None, [*gw.changes.delete_key(key), log]))
    return call.json({"success": True, "Action": "delete", "Key": {"ID": key.id}})


def setup(gw) -> None:
    opts = {"owner_only": True, "tag": "keys"}
    gw.route("GET", "/x-gkey", gkey, summary="Generate a fresh client key (not stored)", tag="keys")
    gw.route("POST", "/x-keys", add_key, summary="Add a provider key", body=ADD_BODY, **opts)
    gw.route(
        "PUT", "/x-keys/{id}", update_key, summary="Update a provider key", body=UPDATE_BODY, **opts
    )
    gw.route("GET", "/x-keys", list_keys, summary="List provider keys", query=LIST_QUERY, **opts)
    gw.route(
        "GET",
        "/x-keys/{id}",
        list_keys,
        summary="One key, keys at L{n}, or keys of a host",
        query=LIST_QUERY,
        **opts,
    )
    gw.route("DELETE", "/x-keys/{id}", delete_key, summary="Delete a provider key", **opts)
