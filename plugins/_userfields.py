"""The fields of a subaccount: JSON Schemas, the rules each one follows, and the public view.

`Edit(...).values()` turns a validated body into new attribute values for one
account (created or updated), raising 400/403/409 for anything a rule refuses.
It reads state but never changes it, so a refused call changes nothing.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from xaiproxy import ledger, ownerconf, whitelists
from xaiproxy.api import ApiError
from xaiproxy.state import FILTER_RE, Account

# Used with fullmatch: "$" would also accept a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9._-]{4,63}")
EMAIL_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
LIMITS = {"RPM": "rpm", "RPH": "rph", "RPD": "rpd", "TPM": "tpm", "TPH": "tph", "TPD": "tpd"}
LISTS = {
    "AllowIPs": ("allow_ips", whitelists.validate_ip),
    "AllowModels": ("allow_models", whitelists.validate_glob),
    "Resources": ("resources", whitelists.validate_path),
    "AllowLevels": ("allow_levels", whitelists.validate_level),
}
PLAIN = {"ChildLimit": "child_limit", "Gear": "gear", "Role": "role", "Tier": "tier"}
PLAIN |= {"Status": "status", "Suspended": "suspended"}
FLAGS = ("Status", "Suspended")
MAPPERS = {
    "ModelMapper": ("model_mapper", "MODEL_MAPPER"),
    "LevelMapper": ("level_mapper", "LEVEL_MAPPER"),
}
MAX_RULES = 200  # per account mapper
DEFAULT_CHILD_LIMIT = Account.__dataclass_fields__["child_limit"].default

_int = {"type": "integer", "minimum": 0}
_list = {
    "type": ["string", "array"],
    "maxLength": 8192,
    "maxItems": 500,
    "items": {"type": "string", "maxLength": 200},
}
_mapper = {"type": ["object", "string"], "maxProperties": MAX_RULES, "maxLength": 65536}
FIELDS: dict[str, dict] = {
    "Name": {"type": "string", "minLength": 4, "maxLength": 63},
    "Email": {"type": "string", "minLength": 3, "maxLength": 254},
    "CreditGranted": {"type": "number", "minimum": -1e9, "maximum": 1e9},
    "Days": {"type": "number", "minimum": 0, "maximum": 365},
    "Alias": {"type": "string", "maxLength": 128},
    "BillingEmail": {"type": "string", "maxLength": 254},
    "Rates": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
    "Factor": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
    "HardLimit": {"type": "number", "minimum": 0, "maximum": 1e12},
    "SoftLimit": {"type": "number", "minimum": 0, "maximum": 1e12},
    **{k: {**_int, "maximum": 1e12} for k in LIMITS},
    "AllowIPs": _list,
    "AllowModels": _list,
    "Resources": _list,
    "AllowLevels": {**_list, "items": {"type": ["string", "integer"], "maxLength": 200}},
    "ModelLimits": {"type": ["object", "string"], "maxProperties": 200, "maxLength": 65536},
    "ModelMapper": _mapper,
    "LevelMapper": _mapper,
    "ChildLimit": {**_int, "maximum": 1_000_000},
    "Gear": {**_int, "maximum": 1_000_000_000},
    "Role": {**_int, "maximum": 1_000_000_000},
    "Tier": {**_int, "maximum": 1_000_000_000},
    "Status": {"type": "boolean"},
    "Suspended": {"type": "boolean"},
    "AutoQuota": {"type": "boolean"},
    "Owner": {"type": "boolean"},
}
CREATE_BODY = {
    "type": "object",
    "properties": FIELDS | {"SendKey": {"type": "boolean"}},
    "required": ["Name", "Email", "CreditGranted"],
    "additionalProperties": False,
}
UPDATE_BODY = {
    "type": "object",
    "properties": FIELDS,
    "minProperties": 1,
    "additionalProperties": False,
}


def bad(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or not any(c.isalpha() for c in name):
        raise bad(
            "Name must be 4-63 characters of letters, digits, '-', '_' or '.',"
            " with at least one letter"
        )
    if FILTER_RE.fullmatch(name):
        raise bad(f"Name {name!r} looks like a filter (L2, G1, ...); choose another")
    return name


def check_email(value: str, field: str = "Email") -> str:
    if not EMAIL_RE.fullmatch(value) or len(value) > 254:
        raise bad(f"{field} must be a valid email address like name@example.com")
    return value


def _text(value: str, field: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise bad(f"{field} must not contain control characters")
    return value.strip()


@dataclass
class Edit:
    """New values for one account. `target` is None on create; `parent` pays and bounds."""

    caller: Account
    parent: Account
    target: Account | None
    body: dict
    state: Any

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        body = self.body
        if "Name" in body:
            out["name"] = self._unique("Name", check_name(body["Name"]), self.state.by_name)
        if "Email" in body:
            out["email"] = self._unique("Email", check_email(body["Email"]), self.state.by_email)
        if "Alias" in body:
            out["alias"] = _text(body["Alias"], "Alias")
        if "BillingEmail" in body:
            raw = body["BillingEmail"].strip()
            out["billing_email"] = check_email(raw, "BillingEmail") if raw else ""
        for field, attr in PLAIN.items():
            if field in body:
                out[attr] = body[field] if field in FLAGS else int(body[field])
        self._rates(out)
        self._factor(out)
        self._owner(out)
        self._limits(out)
        self._lists(out)
        if "ModelLimits" in body:
            out["model_limits"] = self._model_limits(body["ModelLimits"])
        for field, (attr, key) in MAPPERS.items():
            if field in body:
                out[attr] = mapper(field, key, body[field])
        self._child_limit(out)
        self._spend_limits(out)
        return out

    def _child_limit(self, out: dict) -> None:
        """A child's ChildLimit never exceeds its parent's (root has none)."""
        if self.parent.is_root:
            return
        cap = self.parent.child_limit
        if "child_limit" not in out:
            if self.target is None:
                out["child_limit"] = min(DEFAULT_CHILD_LIMIT, cap)
            return
        if out["child_limit"] > cap:
            raise bad(f"ChildLimit {out['child_limit']} exceeds the parent's ({cap})")

    def hard_cap(self, rates: float) -> float | None:
        """The parent's HardLimit in the child's units (at base worth), or None."""
        parent = self.parent
        return parent.hard_limit / parent.rates * rates if parent.hard_limit > 0 else None

    def _unique(self, field: str, value: str, index: dict) -> str:
        other = index.get(value.lower())
        if other is not None and other is not self.target:
            raise ApiError(409, "already_exists", f"{field} {value!r} is already taken")
        return value

    def _rates(self, out: dict) -> None:
        if "Rates" not in self.body:
            return
        rates = float(self.body["Rates"])
        if rates < self.parent.rates - 1e-12:
            raise bad(f"Rates must be at least the parent's ({self.parent.rates:g})")
        out["rates"] = rates

    def _factor(self, out: dict) -> None:
        if "Factor" not in self.body:
            return
        owner = (self.target or self.parent).owner_acc
        if not (self.caller.is_root or owner is self.caller):
            raise ApiError(403, "permission_denied", "only the owner may set Factor")
        out["factor"] = float(self.body["Factor"])

    def _owner(self, out: dict) -> None:
        if "Owner" not in self.body:
            return
        if not self.caller.is_root or not self.parent.is_root:
            raise ApiError(
                403, "permission_denied", "only root may set Owner, and only on its direct children"
            )
        out["owner"] = bool(self.body["Owner"])

    def _limits(self, out: dict) -> None:
        for field, attr in LIMITS.items():
            if field not in self.body:
                continue
            value = int(self.body[field])
            caps = [getattr(a, attr) for a in self.parent.chain if getattr(a, attr)]
            if value and caps and value > min(caps):
                raise bad(f"{field} {value} exceeds the limit above it ({min(caps)}); 0 = none")
            out[attr] = value

    def _lists(self, out: dict) -> None:
        for field, (attr, validate) in LISTS.items():
            if field not in self.body:
                continue
            current = getattr(self.target, attr) if self.target else ""
            try:
                value = whitelists.apply_edit(current, self.body[field], validate)
            except ValueError as exc:
                raise bad(f"{field}: {exc}") from None
            if len(value) > 8192:
                raise bad(f"{field} is too long (at most 8192 characters in all)")
            out[attr] = value

    def _model_limits(self, raw: Any) -> dict:
        current = self.target.model_limits if self.target else {}
        try:
            return ownerconf.normalize("MODEL_LIMITS", raw, current)
        except ValueError as exc:
            raise bad(str(exc).replace("MODEL_LIMITS", "ModelLimits")) from None

    def _spend_limits(self, out: dict) -> None:
        """HardLimit defaults to 10 x CreditGranted; SoftLimit to 0.8 x HardLimit. Setting
        either turns AutoQuota off; AutoQuota true makes both follow the credit again."""
        body, target = self.body, self.target
        explicit = "HardLimit" in body or "SoftLimit" in body
        if "AutoQuota" in body:
            if body["AutoQuota"] and explicit:
                raise bad(
                    "AutoQuota: true derives HardLimit and SoftLimit from the credit granted;"
                    " send either AutoQuota or the limits, not both"
                )
            out["auto_quota"] = body["AutoQuota"]
        elif explicit and (target is None or target.auto_quota):
            out["auto_quota"] = False
        cap = self.hard_cap(out.get("rates", target.rates if target else self.parent.rates))
        if "HardLimit" in body:
            out["hard_limit"] = float(body["HardLimit"])
            if cap is not None and out["hard_limit"] > cap * (1 + 1e-9):
                raise bad(
                    f"HardLimit {out['hard_limit']:g} exceeds the parent's ({cap:g}); 0 = none"
                )
        elif target is None:
            derived = 10 * float(body["CreditGranted"])
            out["hard_limit"] = derived if cap is None else min(derived, cap)
        if "SoftLimit" in body:
            out["soft_limit"] = float(body["SoftLimit"])
        elif "hard_limit" in out:
            out["soft_limit"] = 0.8 * out["hard_limit"]
        hard = out.get("hard_limit", target.hard_limit if target else 0)
        soft = out.get("soft_limit", target.soft_limit if target else 0)
        if soft > hard:
            raise bad(f"SoftLimit ({soft:g}) must not exceed HardLimit ({hard:g})")


def mapper(field: str, key: str, raw: Any) -> dict:
    """An account's ModelMapper/LevelMapper: the owner's k=v syntax, set whole ("" clears)."""
    try:
        rules = ownerconf.normalize(key, raw)
    except ValueError as exc:
        raise bad(str(exc).replace(key, field)) from None
    if len(rules) > MAX_RULES:
        raise bad(f"{field} has {len(rules)} rules; at most {MAX_RULES}")
    return rules


# -- the public view -------------------------------------------------------
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def grants(acc: Account, now: float | None = None) -> list[dict]:
    """Unexpired grants and debts, soonest expiry first, in the account's units."""
    if acc.is_root:
        return []
    now = time.time() if now is None else now
    return [
        {
            "ID": g.id,
            "Amount": ledger.from_n(g.amount_n, acc.rates),
            "Remaining": ledger.from_n(g.remaining_n, acc.rates),
            "GrantedAt": iso(g.granted_at),
            "ExpiresAt": iso(g.expires_at),
            "Reference": g.reference,
        }
        for g in acc.grants
        if g.expires_at > now or g.remaining_n < 0  # a debt shows until it is paid
    ]


def balance(acc: Account) -> float | None:
    """The balance in the account's units; None for root, whose balance is unlimited."""
    return None if acc.is_root else ledger.balance(acc)


def money(acc: Account) -> dict:
    return {"ID": acc.id, "Balance": balance(acc), "CreditBalance": grants(acc)}


def view(acc: Account) -> dict:
    """One account as lists show it: PascalCase, never the SecretKey."""
    out = {
        "ID": acc.id,
        "Name": acc.name,
        "Email": acc.email,
        "Alias": acc.alias,
        "BillingEmail": acc.billing_email,
        "ParentID": acc.parent_id,
        "DNA": acc.dna,
        "Level": acc.level,
        "Status": acc.status,
        "Suspended": acc.suspended,
        "Rates": acc.rates,
        "Factor": acc.factor,
        "HardLimit": acc.hard_limit,
        "SoftLimit": acc.soft_limit,
        "AutoQuota": acc.auto_quota,
    }
    out |= {field: getattr(acc, attr) for field, attr in LIMITS.items()}
    out |= {field: getattr(acc, attr) for field, (attr, _) in LISTS.items()}
    out |= {
        "ModelLimits": acc.model_limits,
        "ModelMapper": acc.model_mapper,
        "LevelMapper": acc.level_mapper,
        "ChildLimit": acc.child_limit,
        "Gear": acc.gear,
        "Role": acc.role,
        "Tier": acc.tier,
        "Owner": acc.owner,
        "CreditGranted": acc.credit_granted,
        "Balance": balance(acc),
        "CreditBalance": grants(acc),
        "PartialKey": acc.key_prefix,
        "CreatedAt": iso(acc.created_at),
        "UpdatedAt": iso(acc.updated_at),
        "MonthSpend": ledger.month_spend(acc),
    }
    return out


ATTR_FIELD = {
    "name": "Name",
    "email": "Email",
    "alias": "Alias",
    "billing_email": "BillingEmail",
    "rates": "Rates",
    "factor": "Factor",
    "hard_limit": "HardLimit",
    "soft_limit": "SoftLimit",
    "model_limits": "ModelLimits",
    "owner": "Owner",
    "auto_quota": "AutoQuota",
    **{attr: field for field, (attr, _) in MAPPERS.items()},
    **{attr: field for field, attr in LIMITS.items()},
    **{attr: field for field, (attr, _) in LISTS.items()},
    **{attr: field for field, attr in PLAIN.items()},
}


def updates(values: dict) -> dict:
    """New attribute values as the PascalCase `Updates` of an answer."""
    return {ATTR_FIELD[attr]: value for attr, value in values.items()}
