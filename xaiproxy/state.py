"""In-memory state the data plane reads: accounts, grants, provider keys, owner configs.

Loaded from the store at start and kept current by the management plugins, which
change it here first and then persist through the store's writer. Lookups of an
identifier (ID, name or email) and the special filters (L2, G1, R0, T3, F1) live here
so every plugin answers "outside your subtree" the same way: 404.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import ownerconf, whitelists
from .errors import ApiError
from .gate import Gate

ACCOUNT_COLUMNS = [
    "id",
    "name",
    "email",
    "alias",
    "billing_email",
    "parent_id",
    "dna",
    "level",
    "status",
    "rates",
    "factor",
    "hard_limit",
    "soft_limit",
    "rpm",
    "rph",
    "rpd",
    "tpm",
    "tph",
    "tpd",
    "allow_ips",
    "allow_models",
    "resources",
    "allow_levels",
    "model_limits",
    "model_mapper",
    "level_mapper",
    "child_limit",
    "gear",
    "role",
    "tier",
    "owner",
    "credit_granted",
    "suspended",
    "auto_quota",
    "key_hash",
    "key_prefix",
    "created_at",
    "updated_at",
]
KEY_COLUMNS = [
    "id",
    "owner_id",
    "name",
    "level",
    "provider",
    "secret",
    "status",
    "config",
    "type",
    "sleep_until",
    "sleep_reason",
    "created_at",
    "updated_at",
]
# What `refresh` leaves alone: identity, and the place in the tree (relink derives it).
REFRESH_SKIP = frozenset(("id", "parent_id", "dna", "level", "name", "email", "key_hash"))
BOOL_COLUMNS = ("status", "owner", "suspended", "auto_quota")  # stored as 0/1
JSON_COLUMNS = ("model_limits", "model_mapper", "level_mapper")  # stored as JSON text
# ASCII digits only: str.isdigit() and \d also take "²" or "٣" (then int() fails or differs).
ID_RE = re.compile(r"[0-9]{1,18}")
FILTER_RE = re.compile(r"([LGRTF])([0-9]{1,18}(?:\.[0-9]{1,18})?)")
FILTER_FIELDS = {"L": "level", "G": "gear", "R": "role", "T": "tier", "F": "factor"}


@dataclass(slots=True)
class Grant:
    id: int
    account_id: int
    amount_n: int
    remaining_n: int
    granted_at: float
    expires_at: float
    reference: str = ""


@dataclass(slots=True, eq=False)
class Account:
    id: int
    name: str
    email: str
    key_hash: str
    key_prefix: str
    dna: str
    level: int
    parent_id: int | None = None
    alias: str = ""
    billing_email: str = ""
    status: bool = True
    rates: float = 1.0
    factor: float = 1.0
    hard_limit: float = 0.0
    soft_limit: float = 0.0
    rpm: int = 0
    rph: int = 0
    rpd: int = 0
    tpm: int = 0
    tph: int = 0
    tpd: int = 0
    allow_ips: str = ""
    allow_models: str = ""
    resources: str = ""
    allow_levels: str = ""  # routing levels; "" = all
    model_limits: dict = field(default_factory=dict)
    model_mapper: dict = field(default_factory=dict)  # own MODEL_MAPPER rules (SPEC 3)
    level_mapper: dict = field(default_factory=dict)
    child_limit: int = 1000
    gear: int = 0
    role: int = 0
    tier: int = 0
    owner: bool = False
    credit_granted: float = 0.0
    suspended: bool = False  # set by an ancestor: stops this account only, not its subtree
    auto_quota: bool = True  # HardLimit/SoftLimit follow credit_granted until set explicitly
    created_at: float = 0.0
    updated_at: float = 0.0
    # -- runtime only ---------------------------------------------------
    parent: Account | None = None
    children: dict[int, Account] = field(default_factory=dict)
    chain: tuple[Account, ...] = ()  # root .. self
    owner_acc: Account | None = None  # nearest owner, ancestor-or-self
    grants: list[Grant] = field(default_factory=list)  # soonest expiry first
    reserved_n: int = 0  # estimated cost of requests in flight
    deleted: bool = False  # removed from the tree; its requests in flight settle with the parent
    # Month spend (owned by ledger.py, nano base units): its own, and its subtree's for
    # HardLimit, which also counts what the subtree's requests in flight hold.
    month: str = ""  # "YYYY-MM" that month_n and tree_spend_n count
    month_n: int = 0
    tree_spend_n: int = 0
    tree_held_n: int = 0
    ip_nets: tuple | None = None
    model_match: Any = None
    resource_match: Any = None
    level_set: frozenset[int] | None = None
    model_rules: list = field(default_factory=list)  # compiled model_mapper
    level_rules: list = field(default_factory=list)

    @property
    def is_root(self) -> bool:
        return self.parent_id is None

    def row(self) -> dict:
        """The account as store columns."""
        values = {c: getattr(self, c) for c in ACCOUNT_COLUMNS}
        for column in JSON_COLUMNS:
            values[column] = orjson.dumps(values[column]).decode()
        for column in BOOL_COLUMNS:
            values[column] = int(values[column])
        return values

    def compile(self) -> None:
        """Rebuild matchers after a whitelist or mapper changes."""
        self.ip_nets = whitelists.compile_ips(self.allow_ips)
        self.model_match = whitelists.compile_globs(self.allow_models)
        self.resource_match = whitelists.compile_globs(self.resources)
        self.level_set = whitelists.compile_levels(self.allow_levels)
        self.model_rules = ownerconf.glob_list(self.model_mapper)
        self.level_rules = ownerconf.glob_list(self.level_mapper)

    def is_descendant_of(self, other: Account) -> bool:
        return self is not other and self.dna.startswith(other.dna)

    def enabled(self) -> bool:
        return all(a.status for a in self.chain)

    def level_allowed(self, level: int) -> bool:
        """AllowLevels of the account and every ancestor."""
        return all(a.level_set is None or level in a.level_set for a in self.chain)


@dataclass(slots=True, eq=False)
class ProviderKey:
    id: int
    owner_id: int
    provider: str
    secret: str  # plain text in memory, sealed in the store
    name: str = ""
    level: int = 1
    status: bool = True
    config: dict = field(default_factory=dict)
    type: str = "openai-compatible"  # the vendor (vendors.VENDORS)
    sleep_until: float = 0.0
    sleep_reason: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    def awake(self, now: float) -> bool:
        return self.status and self.sleep_until <= now


@dataclass(slots=True)
class Undo:
    """The inverses of one management change, run newest first. Each is a delta or a
    re-link, so data-plane changes made meanwhile (spends, reservations) are kept.
    `after`: what to do once the change is stored (`State.on_commit`)."""

    steps: list[Callable[[], None]]
    after: list[Callable[[], None]] = field(default_factory=list)

    def __call__(self) -> None:
        self.after.clear()
        while self.steps:
            self.steps.pop()()

    def committed(self) -> None:
        self.steps.clear()
        while self.after:
            self.after.pop(0)()


class State:
    """Everything the data plane needs, in memory. Single event loop: no locks."""

    def __init__(self) -> None:
        self.accounts: dict[int, Account] = {}
        self.by_key: dict[str, Account] = {}
        self.by_name: dict[str, Account] = {}
        self.by_email: dict[str, Account] = {}
        self.keys: dict[int, ProviderKey] = {}
        self.configs: dict[int, Any] = {}  # owner id -> ownerconf.OwnerConfig
        self.keys_version = 0  # bumped on every provider-key change; routing caches on it
        self._next_ids: dict[str, int] = {}
        self.gate = Gate()  # local changes against reloads from the store (gate.py)
        self.ids = None  # ids.IdBlocks when instances share the database (SPEC 12)
        self._undo: Undo | None = None
        self.moves = None  # hotstate.moves.Moves when money lives in Redis (changes.commit)

    # -- undo (a management change whose unit was not stored is taken back) --
    @contextlib.contextmanager
    def recording(self) -> Iterator[Undo]:
        """Collect the inverse of every change made inside; a failure inside undoes them."""
        undo = Undo([])
        self._undo = undo
        try:
            yield undo
        except BaseException:
            self._undo = None
            undo()
            raise
        finally:
            self._undo = None

    def remember(self, inverse: Callable[[], None]) -> None:
        """Register how to take back a change just made (a no-op outside `recording`)."""
        if self._undo is not None:
            self._undo.steps.append(inverse)

    def on_commit(self, fn: Callable[[], None]) -> None:
        """Run fn once the change being made is stored (at once outside `recording`)."""
        if self._undo is not None:
            self._undo.after.append(fn)
        else:
            fn()

    # -- id allocation (one process owns the store, or blocks from it: ids.py) --
    def next_id(self, table: str) -> int:
        if self.ids is not None:
            return self.ids.next(table)
        value = self._next_ids.get(table, 1)
        self._next_ids[table] = value + 1
        return value

    def seed_id(self, table: str, max_id: int | None) -> None:
        self._next_ids[table] = max(self._next_ids.get(table, 1), (max_id or 0) + 1)
        if self.ids is not None:
            self.ids.want(table)

    # -- accounts ----------------------------------------------------------
    @property
    def root(self) -> Account:
        return self.accounts[1]

    def add_account(self, acc: Account) -> None:
        self.accounts[acc.id] = acc
        self.by_key[acc.key_hash] = acc
        self.by_name[acc.name.lower()] = acc
        self.by_email[acc.email.lower()] = acc
        acc.compile()
        if acc.parent_id is not None:
            acc.parent = self.accounts[acc.parent_id]
            acc.parent.children[acc.id] = acc
        self.relink(acc)
        self.remember(lambda: self.remove_account(acc))

    def remove_account(self, acc: Account) -> None:
        self.accounts.pop(acc.id, None)
        self.by_key.pop(acc.key_hash, None)
        self.by_name.pop(acc.name.lower(), None)
        self.by_email.pop(acc.email.lower(), None)
        if acc.parent is not None:
            acc.parent.children.pop(acc.id, None)
        self.remember(lambda: self.add_account(acc))

    def rename(self, acc: Account, name: str | None = None, email: str | None = None) -> None:
        old_name, old_email = acc.name, acc.email
        if name is not None:
            self.by_name.pop(acc.name.lower(), None)
            acc.name = name
            self.by_name[name.lower()] = acc
        if email is not None:
            self.by_email.pop(acc.email.lower(), None)
            acc.email = email
            self.by_email[email.lower()] = acc
        if name is not None or email is not None:
            self.remember(lambda: self.rename(acc, old_name, old_email))

    def set_key(self, acc: Account, key_hash: str, key_prefix: str) -> None:
        old = acc.key_hash, acc.key_prefix
        self.remember(lambda: self.set_key(acc, *old))
        self.by_key.pop(acc.key_hash, None)
        acc.key_hash, acc.key_prefix = key_hash, key_prefix
        self.by_key[key_hash] = acc

    def reparent(self, acc: Account, parent: Account) -> None:
        old = acc.parent
        if old is not None:
            old.children.pop(acc.id, None)
            self.remember(lambda: self.reparent(acc, old))
        acc.parent, acc.parent_id = parent, parent.id
        parent.children[acc.id] = acc
        self.relink(acc)

    def refresh(self, acc: Account, values: dict) -> None:
        """Set an account's stored fields as another instance left them (sync.py): indexes,
        matchers and the tree follow; money and runtime fields stay this instance's own."""
        self.rename(acc, values["name"], values["email"])
        if values["key_hash"] != acc.key_hash:
            self.set_key(acc, values["key_hash"], values["key_prefix"])
        parent_id, owner = values["parent_id"], acc.owner
        for column in ACCOUNT_COLUMNS:
            if column not in REFRESH_SKIP:
                setattr(acc, column, values[column])
        acc.compile()
        if parent_id != acc.parent_id and parent_id in self.accounts:
            self.reparent(acc, self.accounts[parent_id])
        elif owner != acc.owner:
            self.relink(acc)

    def relink(self, acc: Account) -> None:
        """Recompute chain, DNA, level and owner for acc and its whole subtree (no recursion:
        a chain may be thousands deep)."""
        stack = [acc]
        while stack:
            a = stack.pop()
            parent = a.parent
            a.chain = (*parent.chain, a) if parent else (a,)
            a.dna = f"{parent.dna}{a.id}." if parent else f".{a.id}."
            a.level = len(a.chain) - 1
            a.owner_acc = a if (a.owner or parent is None) else parent.owner_acc
            stack.extend(a.children.values())

    def subtree(self, acc: Account) -> list[Account]:
        out, stack = [], list(acc.children.values())
        while stack:
            a = stack.pop()
            out.append(a)
            stack.extend(a.children.values())
        return out

    def find(self, ident: str) -> Account | None:
        """ID, name or email, anywhere in the tree."""
        ident = str(ident).strip()
        if is_id(ident):
            return self.accounts.get(int(ident))
        return self.by_name.get(ident.lower()) or self.by_email.get(ident.lower())

    def descendant(self, caller: Account, ident: str, what: str = "account") -> Account:
        """The account `ident` names, if it is below `caller`; 404 otherwise."""
        acc = self.find(ident)
        if acc is None or not acc.is_descendant_of(caller):
            raise ApiError(404, "not_found", f"{what} {str(ident)[:64]!r} not found")
        return acc

    def select(self, caller: Account, ident: str) -> list[Account] | None:
        """Accounts below caller that a special filter (L2, G1, R0, T3, F1.5) names, else None."""
        m = FILTER_RE.fullmatch(str(ident).strip())
        if not m:
            return None
        attr, value = FILTER_FIELDS[m.group(1)], float(m.group(2))
        return [a for a in self.subtree(caller) if float(getattr(a, attr)) == value]

    # -- provider keys -----------------------------------------------------
    def put_key(self, key: ProviderKey) -> None:
        old = self.keys.get(key.id)
        self.keys[key.id] = key
        self.keys_version += 1
        if old is None:
            self.remember(lambda: self.drop_key(key.id))
        elif old is not key:
            self.remember(lambda: self.put_key(old))

    def drop_key(self, key_id: int) -> None:
        old = self.keys.pop(key_id, None)
        self.keys_version += 1
        if old is not None:
            self.remember(lambda: self.put_key(old))

    def owner_keys(self, owner_id: int) -> list[ProviderKey]:
        return [k for k in self.keys.values() if k.owner_id == owner_id]

    def pool(self, owner_id: int, level: int) -> list[ProviderKey]:
        return [k for k in self.keys.values() if k.owner_id == owner_id and k.level == level]


def is_id(text: str) -> bool:
    """An ID in a path or filter: 1-18 ASCII digits."""
    return ID_RE.fullmatch(text) is not None
