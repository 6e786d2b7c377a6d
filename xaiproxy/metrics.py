"""GET /metrics: Prometheus text from a registry of this app's own (no global registry).

Three sources, all cheap on the hot path:
- every response, when its headers go out (`on_response_prepare`): requests by path,
  status and owner;
- every data-plane request, at its end (`gw.hooks.on_request_end`): upstream attempts,
  failures, fallbacks and key sleeps from `ctx.attempt_log`, tokens and cost by model,
  rejections by reason, duration and time to first byte;
- scrape time (a custom collector): streams open, requests in flight, sleeping keys,
  the batched writer's queue depth, flush latency, flushes and write errors.
On the hot path a request costs a few dict updates (`Tally`, `Hist`); the families are
built from them at scrape time and rendered by prometheus-client.
Label values are bounded: paths are route patterns or the documented /v1 paths;
a model outside its owner's price table is `other`; and each of the model, owner
and key labels takes at most `MAX_VALUES` distinct values (later ones are `other`).
"""

from __future__ import annotations

import hmac
import time
from bisect import bisect_left
from itertools import accumulate

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import __version__, errors
from .ledger import NANO
from .openapi import DATA_PLANE_PATHS
from .plugins import REQUEST_CALLER, context_of

REJECTIONS = frozenset(
    {
        "invalid_api_key",
        "account_disabled",
        "account_suspended",
        "ip_not_allowed",
        "resource_not_allowed",
        "model_not_allowed",
        "level_not_allowed",
        "insufficient_balance",
        "hard_limit_reached",
        "rate_limit_exceeded",
        "overloaded",
    }
)
RETRYABLE = frozenset({401, 403, 429})  # and every 5xx, and every network outcome
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_KINDS = ("prompt", "completion", "cached", "cache_write")
PROBE_OUTCOMES = {True: "accepted", False: "refused", None: "inconclusive"}  # probes.probe
MAX_VALUES = 500  # distinct values per open-ended label (model, owner, key)
OTHER = "other"


class Bounded:
    """An open-ended label: the first `cap` distinct values are kept, the rest are `other`."""

    __slots__ = ("cap", "seen")

    def __init__(self, cap: int = MAX_VALUES) -> None:
        self.cap = cap
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.cap:
            return OTHER
        self.seen.add(value)
        return value


def path_label(request: web.BaseRequest) -> str:
    """A bounded label: the route pattern, a documented /v1 path, or 'other'."""
    path = request.path
    if path.startswith("/v1/"):
        return path if path in DATA_PLANE_PATHS else "/v1/other"
    route = getattr(request.match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "other"


def failed(outcome) -> bool:
    return not isinstance(outcome, int) or outcome >= 500 or outcome in RETRYABLE


def model_label(ctx) -> str:
    """The model billed, if the owner's price table names it; else `other`."""
    model = ctx.upstream_model or ctx.model
    prices = ctx.config.prices if ctx.config is not None else None
    return model if prices is not None and prices.known(model) else OTHER


def _owner_of(request: web.BaseRequest) -> str:
    ctx = context_of(request)
    acc = ctx.account if ctx is not None else request.get(REQUEST_CALLER)
    owner = acc.owner_acc if acc is not None else None
    return str(owner.id) if owner is not None else ""


class Tally:
    """A labelled counter kept as plain numbers; exported as a family at scrape time.

    prometheus-client's Counter takes a lock and several calls per inc(); on the hot
    path a dict update is enough (one event loop), and the exposition stays theirs.
    """

    __slots__ = ("name", "doc", "labels", "values")

    def __init__(self, name: str, doc: str, labels: list[str]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple, float] = {}

    def inc(self, labels: tuple, amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, value in sorted(self.values.items()):
            family.add_metric(list(labels), value)
        return family


class Hist:
    """A labelled histogram kept as per-bucket counts; exported at scrape time."""

    __slots__ = ("name", "doc", "labels", "bounds", "data")

    def __init__(self, name: str, doc: str, labels: list[str], bounds: tuple) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, bounds
        self.data: dict[tuple, list] = {}  # labels -> [count per bucket..., +Inf, sum]

    def observe(self, labels: tuple, value: float) -> None:
        row = self.data.get(labels)
        if row is None:
            row = self.data[labels] = [0] * (len(self.bounds) + 1) + [0.0]
        row[bisect_left(self.bounds, value)] += 1
        row[-1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, row in sorted(self.data.items()):
            cumulative = list(accumulate(row[:-1]))
            les = [*(repr(float(b)) for b in self.bounds), "+Inf"]
            family.add_metric(list(labels), list(zip(les, cumulative, strict=True)), row[-1])
        return family


class Metrics:
    """This app's metrics. `observe(ctx)` is the on_request_end hook."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.model, self.owner, self.key = Bounded(), Bounded(), Bounded()
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Tally(
            "xaiproxy_requests", "HTTP requests answered", ["path", "status", "owner"]
        )
        self.attempts = Tally("xaiproxy_upstream_attempts", "Upstream attempts", ["level", "key"])
        self.failures = Tally(
            "xaiproxy_upstream_failures",
            "Upstream attempts that failed (network, 5xx, 429, 401, 403)",
            ["level", "key", "outcome"],
        )
        self.fallbacks = Tally(
            "xaiproxy_upstream_fallbacks",
            "Moves to another attempt; from_level == to_level is another key, else SWITCH_OVER",
            ["from_level", "to_level"],
        )
        self.sleeps = Tally(
            "xaiproxy_key_sleeps",
            "Provider keys put to sleep (rate_limited: a 429, auth_failed: a failed probe)",
            ["level", "key", "reason"],
        )
        self.probes = Tally(
            "xaiproxy_key_probes",
            "Key probes after a 401/403 (accepted, refused, inconclusive)",
            ["key", "outcome"],
        )
        self.tokens = Tally("xaiproxy_tokens", "Tokens billed", ["model", "kind"])
        self.cost = Tally("xaiproxy_cost_usd", "Cost billed, in base USD (before Rates)", ["model"])
        self.rejections = Tally(
            "xaiproxy_rejections", "Data-plane requests refused before the upstream", ["reason"]
        )
        self.duration = Hist(
            "xaiproxy_request_duration_seconds",
            "Data-plane request duration, to the last byte",
            ["stream"],
            LATENCY_BUCKETS,
        )
        self.ttfb = Hist(
            "xaiproxy_time_to_first_byte_seconds",
            "Data-plane time to the first byte sent to the client",
            ["stream"],
            LATENCY_BUCKETS,
        )
        self.families = (
            self.requests,
            self.attempts,
            self.failures,
            self.fallbacks,
            self.sleeps,
            self.probes,
            self.tokens,
            self.cost,
            self.rejections,
            self.duration,
            self.ttfb,
        )
        self.registry.register(_ScrapeCollector(gw, self.families))

    # -- every response ------------------------------------------------------
    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        owner = self.owner(_owner_of(request))
        self.requests.inc((path_label(request), str(response.status), owner))

    # -- every data-plane request --------------------------------------------
    def observe(self, ctx) -> None:
        if ctx.attempt_log:
            self._attempts(ctx.attempt_log)
        if ctx.error in REJECTIONS:
            self.rejections.inc((ctx.error,))
        if ctx.prompt_tokens or ctx.completion_tokens or ctx.cost_n:
            self._usage(ctx, self.model(model_label(ctx)))
        stream = ("true",) if ctx.stream else ("false",)
        self.duration.observe(stream, time.perf_counter() - ctx.started)
        if ctx.ttfb:
            self.ttfb.observe(stream, ctx.ttfb)

    def _attempts(self, attempt_log: list) -> None:
        previous = None
        for key_id, level, outcome in attempt_log:
            key, lvl = self.key(str(key_id)), str(level)
            self.attempts.inc((lvl, key))
            if failed(outcome):
                self.failures.inc((lvl, key, str(outcome)))
            if previous is not None:
                self.fallbacks.inc((previous, lvl))
            previous = lvl

    # -- key health (routing.py, probes.py) ----------------------------------
    def key_slept(self, key, reason: str) -> None:
        self.sleeps.inc((str(key.level), self.key(str(key.id)), reason))

    def key_probed(self, key, verdict: bool | None) -> None:
        outcome = PROBE_OUTCOMES[verdict]
        self.probes.inc((self.key(str(key.id)), outcome))

    def _usage(self, ctx, model: str) -> None:
        counts = (
            ctx.prompt_tokens,
            ctx.completion_tokens,
            ctx.cached_tokens,
            ctx.cache_write_tokens,
        )
        for kind, count in zip(TOKEN_KINDS, counts, strict=True):
            if count:
                self.tokens.inc((model, kind), count)
        if ctx.cost_n:
            self.cost.inc((model,), ctx.cost_n / NANO)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ScrapeCollector:
    """Values read when Prometheus scrapes, not kept per request."""

    def __init__(self, gw, families: tuple) -> None:
        self.gw = gw
        self.families = families

    def describe(self):
        return []

    def collect(self):
        for tally in self.families:
            yield tally.family()
        gw, store = self.gw, self.gw.store
        yield _gauge("xaiproxy_streams_open", "Streams being relayed now", _streams_open(gw))
        yield _gauge("xaiproxy_inflight", "Data-plane requests in flight", _inflight(gw))
        yield _gauge(
            "xaiproxy_store_queue_depth", "Units waiting for the batched writer", store.queue_depth
        )
        yield _gauge(
            "xaiproxy_store_last_flush_seconds",
            "Duration of the last group commit",
            store.last_flush_seconds,
        )
        yield _counter("xaiproxy_store_flushes", "Group commits", store.flushes)
        yield _counter(
            "xaiproxy_store_write_errors", "Units the writer failed to commit", store.write_errors
        )
        yield self._sleeping_keys()
        info = GaugeMetricFamily("xaiproxy_build_info", "Version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def _sleeping_keys(self) -> GaugeMetricFamily:
        now = time.time()
        family = GaugeMetricFamily(
            "xaiproxy_keys_sleeping", "Provider keys asleep now", labels=["owner", "level"]
        )
        counts: dict[tuple[str, str], int] = {}
        for key in self.gw.state.keys.values():
            if key.sleep_until > now:
                labels = (str(key.owner_id), str(key.level))
                counts[labels] = counts.get(labels, 0) + 1
        for labels, count in sorted(counts.items()):
            family.add_metric(list(labels), count)
        return family


def _streams_open(gw) -> int:
    return int(getattr(gw, "streams_open", 0) or 0)


def _inflight(gw) -> int:
    return int(getattr(getattr(gw, "relay", None), "inflight", 0) or 0)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


METRICS = web.AppKey("metrics", Metrics)


def authorized(request: web.Request, token: str) -> bool:
    if not token:
        return True
    auth = request.headers.get("Authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


async def _scrape(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    if not authorized(request, metrics.gw.settings.metrics_token):
        return errors.response(
            401,
            "invalid_metrics_token",
            "GET /metrics needs 'Authorization: Bearer <metrics_token>'",
            {"WWW-Authenticate": "Bearer"},
        )
    body = metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application, gw) -> Metrics | None:
    """GET /metrics and the hooks that feed it; nothing at all when settings.metrics is off."""
    if not gw.settings.metrics:
        return None
    metrics = gw.metrics = Metrics(gw)
    app[METRICS] = metrics
    app.on_response_prepare.append(metrics.on_prepare)
    gw.hooks.on_request_end.append(metrics.observe)
    app.router.add_get("/metrics", _scrape)
    return metrics
