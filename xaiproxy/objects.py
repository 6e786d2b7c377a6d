"""Stateful provider objects (SPEC 5): off by default, owned by the account that made them.

Files, batches, assistants, threads, vector stores, stored responses… live at the
provider under the OWNER's key, so every account below the owner would share them.
A stateful path is refused (403 `resource_not_allowed`) unless the owner's RESOURCES
names it. When it does:

- the `id` of a successful JSON answer to a create (POST to a collection) is
  recorded as owned by the caller (memory at once, the store through the writer);
  so are the ids an owned object's answers name (a batch's `output_file_id`, an
  upload's `file.id`, a run's `thread_id`), for that object's owner;
- a path naming an object (`/v1/files/{id}/content`) passes only when the object is
  the caller's or a descendant's: anything else is 404, as if it did not exist;
- a list answer (GET on a collection, JSON with a `data` array) keeps only the
  caller's subtree's items;
- an object id a JSON body names (`input_file_id`, `file_ids`, `previous_response_id`,
  … : `BODY_FIELDS`, at any depth) must be the caller's subtree's too (404
  otherwise), so a leaked id is of no use to another account. This holds once the
  owner has enabled any stateful path; before that no object is the gateway's.

The data plane reads the in-memory map only; the table is read once at start.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from .errors import ApiError
from .store import ops as o

# "/v1/<collection>[/<object id>[/...]]", longest first; "organization/<x>" is one each.
COLLECTIONS = (
    "fine_tuning/checkpoints",
    "fine_tuning/jobs",
    "messages/batches",
    "chat/completions",
    "threads/runs",
    "fine_tuning",
    "organization",
    "files",
    "uploads",
    "batches",
    "assistants",
    "threads",
    "vector_stores",
    "containers",
    "responses",
)
# Collections whose plain POST is a model call: stateless unless it is stored (recorded).
CALLS = frozenset(("responses", "chat/completions"))
RELATED = ("thread_id", "output_file_id", "error_file_id")  # ids an answer names
# Request-body fields that name provider objects (a string or a list of strings).
BODY_FIELDS = frozenset(
    (
        "file_id",
        "file_ids",
        "input_file_id",
        "training_file",
        "validation_file",
        "previous_response_id",
        "response_id",
        "batch_id",
        "vector_store_id",
        "vector_store_ids",
        "assistant_id",
        "thread_id",
        "container_id",
    )
)
FREE_FORM = frozenset(("metadata",))  # the client's own labels, never object references
HEAD_CAP = 256 * 1024  # what is kept of an answer to find its ids
LIST_CAP = 16 * 1024 * 1024  # a list answer is read whole to filter it
_FIRST_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,200})"')


@functools.lru_cache(maxsize=1024)  # every data-plane request asks; few distinct paths
def parse(method: str, path: str) -> tuple[str, str] | None:
    """(collection, top object id or "") of a stateful path; None for anything else."""
    segs = [s for s in path.split("/") if s]  # "/v1//files" is "/v1/files" too
    if segs[:1] != ["v1"]:
        return None
    rest = "/".join(segs[1:])
    coll = next((c for c in COLLECTIONS if rest == c or rest.startswith(c + "/")), None)
    if coll is None:
        return None
    tail = segs[1 + coll.count("/") + 1 :]
    if coll == "organization" and tail:
        coll, tail = f"organization/{tail[0]}", tail[1:]
    model_call = not tail or (coll == "responses" and len(tail) == 1)
    if coll in CALLS and method == "POST" and model_call:
        return None  # a model call, or /v1/responses/input_tokens and the like
    return coll, tail[0] if tail else ""


@dataclass(slots=True)
class Plan:
    """What the data plane does for one request to a stateful path (ctx.objects)."""

    registry: Objects
    ctx: object
    mode: str  # "create", "list", "item" or "call" (a model call that may store)
    owner: tuple[int, str] = (0, "")  # (account id, dna) new ids are recorded for
    head: bytearray = field(default_factory=bytearray)

    def tee(self, scanner):
        return _Tee(scanner, self)

    def done(self) -> None:
        """The answer ended cleanly: record the ids it names."""
        if self.ctx.status >= 300:
            return
        self.registry.record(self.ctx.account.owner_acc.id, self.owner, self._ids())

    def _ids(self) -> list[str]:
        head = bytes(self.head)
        try:
            answer = orjson.loads(head)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            # A stream (a stored response): its first event names the object.
            m = _FIRST_ID.search(head) if self.mode == "call" else None
            return [m.group(1).decode()] if m else []
        ids = [answer.get("id")] if self.mode != "item" else []
        ids += [answer.get(k) for k in RELATED]
        if isinstance(files := answer.get("result_files"), list):
            ids += files
        inner = answer.get("file")
        ids.append(inner.get("id") if isinstance(inner, dict) else None)
        return [i for i in ids if isinstance(i, str) and 0 < len(i) <= 200]

    async def list_answer(self, up, headers) -> web.Response:
        """Read a list answer whole and keep only the caller's subtree's items."""
        status = up.status  # read before release: a released connection forgets its answer
        try:
            body = await up.read(LIST_CAP + 1)  # the connection's idle timer bounds the wait
            broken = up.error is not None
        finally:
            up.release()
        if broken:
            raise ApiError(502, "upstream_broken", "the upstream broke off the list")
        if len(body) > LIST_CAP:
            raise ApiError(502, "list_too_large", "the list is too large to filter; page it")
        if status < 300:
            body = self.registry.filter(self.ctx, body)
        headers.popall("Content-Length", None)
        self.ctx.status = status
        return web.Response(status=status, body=body, headers=headers)


class _Tee:
    """A usage scanner that also keeps the answer's first HEAD_CAP bytes for the plan."""

    __slots__ = ("inner", "plan")

    def __init__(self, inner, plan: Plan) -> None:
        self.inner, self.plan = inner, plan

    def feed(self, chunk: bytes) -> bytes:
        head = self.plan.head
        if len(head) < HEAD_CAP:
            head += chunk[: HEAD_CAP - len(head)]
        return self.inner.feed(chunk)

    def finish(self) -> bytes:
        tail = self.inner.finish()
        self.plan.done()
        return tail

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class Objects:
    """Who made each provider object: (owner id, object id) -> (account id, dna)."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.owned: dict[tuple[int, str], tuple[int, str]] = {}
        self._enabled: dict[int, tuple[object, bool]] = {}  # owner id -> (its config, on)

    async def load(self) -> None:
        rows = await self.gw.store.load_objects()
        self.owned = {(r[0], r[1]): (r[2], r[3]) for r in rows}

    # -- admission ---------------------------------------------------------------
    def admit(self, ctx) -> None:
        """Refuse a stateful path the owner has not enabled, or an object not the caller's."""
        method = ctx.request.method
        target = parse(method, ctx.path)
        if target is None:
            if method == "POST" and ctx.path.rstrip("/") in (
                "/v1/responses",
                "/v1/chat/completions",
            ):
                self._stored_call(ctx)
            return
        coll, object_id = target
        match = ctx.config.resource_match
        if match is None or not match(ctx.path):
            raise ApiError(
                403,
                "resource_not_allowed",
                f"/v1/{coll} holds objects shared by the owner's provider key; the owner must"
                " enable it in RESOURCES",
            )
        acc = ctx.account
        if not object_id:
            mode = "create" if method == "POST" else "list"
            ctx.objects = Plan(self, ctx, mode, (acc.id, acc.dna))
            return
        maker = self.maker(acc.owner_acc.id, object_id)
        if maker is None or not maker[1].startswith(acc.dna):
            raise ApiError(404, "not_found", f"no object {object_id[:100]!r} in /v1/{coll}")
        ctx.objects = Plan(self, ctx, "item", maker)

    def check_body(self, ctx) -> None:
        """Every object id the JSON body names is the caller's subtree's (404 otherwise)."""
        if not isinstance(ctx.payload, dict) or not self.enabled(ctx.config):
            return
        acc = ctx.account
        for object_id in named_ids(ctx.payload):
            maker = self.maker(acc.owner_acc.id, object_id)
            if maker is None or not maker[1].startswith(acc.dna):
                raise ApiError(
                    404, "not_found", f"no object {object_id[:100]!r} (named in the request body)"
                )

    def enabled(self, cfg) -> bool:
        """Whether the owner's RESOURCES opens any stateful path (worked out once per config)."""
        match = cfg.resource_match
        if match is None:
            return False
        seen = self._enabled.get(cfg.owner_id)
        if seen is None or seen[0] is not cfg:
            on = any(
                match(f"/v1/{c}/_") or (c not in CALLS and match(f"/v1/{c}")) for c in COLLECTIONS
            )
            self._enabled[cfg.owner_id] = seen = (cfg, on)
        return seen[1]

    def _stored_call(self, ctx) -> None:
        """A model call whose answer the provider may store: record it where reads are on."""
        match = ctx.config.resource_match
        if match is not None and match(ctx.path.rstrip("/") + "/_"):
            acc = ctx.account
            ctx.objects = Plan(self, ctx, "call", (acc.id, acc.dna))

    def maker(self, owner_id: int, object_id: str) -> tuple[int, str] | None:
        """(account id, its DNA now) of the account that made the object."""
        rec = self.owned.get((owner_id, object_id))
        if rec is None:
            return None
        acc = self.gw.state.accounts.get(rec[0])
        return (rec[0], acc.dna) if acc is not None else rec  # deleted: its old place

    # -- answers -----------------------------------------------------------------
    def record(self, owner_id: int, maker: tuple[int, str], ids: list[str]) -> None:
        now, ops = time.time(), []
        for object_id in ids:
            slot = (owner_id, object_id)
            if slot not in self.owned:  # the first maker keeps it
                self.owned[slot] = maker
                ops.append(o.ObjectPut(owner_id, object_id, *maker, now))
        if ops:
            self.gw.store.submit(ops)
            if self.gw.sync is not None:  # the other instances serve these objects too
                for op in ops:
                    row = [owner_id, op.object_id, *maker]
                    self.gw.sync.share("object", orjson.dumps(row).decode())

    def filter(self, ctx, body: bytes) -> bytes:
        """A list answer with only the items the caller may see (fails closed)."""
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise ApiError(
                502, "unfilterable_list", "the provider's list answer was not a JSON list"
            )
        acc = ctx.account
        oid, dna = acc.owner_acc.id, acc.dna
        answer["data"] = [
            item
            for item in answer["data"]
            if isinstance(item, dict)
            and isinstance(item.get("id"), str)
            and (maker := self.maker(oid, item["id"])) is not None
            and maker[1].startswith(dna)
        ]
        return orjson.dumps(answer)


def named_ids(payload) -> Iterator[str]:
    """The strings under BODY_FIELDS anywhere in a JSON body (no recursion: any depth)."""
    stack = [payload]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key in FREE_FORM:
                continue
            if key in BODY_FIELDS:
                if isinstance(value, str):
                    yield value
                elif isinstance(value, list):
                    yield from (v for v in value if isinstance(v, str))
            if isinstance(value, dict | list):
                stack.append(value)
