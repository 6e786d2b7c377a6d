"""Benchmark runner: the same loads against every target, in one run.

Targets: the mock upstream directly (the floor), nginx as a plain streaming
reverse proxy, LiteLLM's proxy, and xaiproxy. Rounds alternate between the
targets so that drift on the machine spreads over all of them. Then a soak
through xaiproxy (RSS growth) and /x-bill over a million usage records.

    .venv/bin/python bench/run.py            # the full run (make bench), < 10 min
    .venv/bin/python bench/run.py --quick    # 1-2 minutes
    .venv/bin/python bench/run.py --targets mock,xaiproxy --scenarios stream-50
"""

import argparse
import asyncio
import resource
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import bill_bench
import report
import uvloop
import wrk
from loadgen import Load, Result, percentile, run_load
from procstat import Sampler
from targets import BENCH, Ctx, LiteLLMTarget, MockTarget, NginxTarget, Skip, Target
from xai import XaiproxyTarget


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    concurrency: int
    chunks: int = 20
    delay_ms: float = 0.0
    anthropic: bool = False
    model: str = "gpt-4o-mini"

    def mock_knobs(self) -> dict:
        return {"chunks": self.chunks, "delay_ms": self.delay_ms, "ttfb_ms": 0, "fault": ""}


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("stream-1", stream=True, concurrency=1),  # unloaded: time to first byte
        Scenario("plain-50", stream=False, concurrency=50),
        Scenario("stream-50", stream=True, concurrency=50),
        Scenario("stream-500", stream=True, concurrency=500),
        Scenario("stream-500-20ms", stream=True, concurrency=500, delay_ms=20),
        Scenario("anthropic-stream-50", True, 50, anthropic=True, model="claude-3-5-haiku-latest"),
    )
}
DEFAULT_SCENARIOS = ["stream-1", "plain-50", "stream-50", "stream-500", "stream-500-20ms"]
TARGETS = {
    "mock": MockTarget,
    "nginx": NginxTarget,
    "litellm": LiteLLMTarget,
    "xaiproxy": XaiproxyTarget,
}
STARTED: list[Target] = []  # everything to stop, whatever happens


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="short rounds, one round each, small soak, no bill"
    )
    p.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}"
    )
    p.add_argument(
        "--scenarios", default=",".join(DEFAULT_SCENARIOS), help=f"of {', '.join(SCENARIOS)}"
    )
    p.add_argument("--duration", type=float, help="seconds per round (default 5, quick 2)")
    p.add_argument("--rounds", type=int, help="rounds per target and scenario (default 2, quick 1)")
    p.add_argument(
        "--soak", type=int, help="streams through xaiproxy for the RSS soak (default 10000)"
    )
    p.add_argument(
        "--bill-rows", type=int, help="usage rows for the /x-bill timing (default 1e6; 0 skips)"
    )
    p.add_argument("--grace", type=float, help="seconds a round waits for its last requests (30)")
    p.add_argument(
        "--wrk",
        action="store_true",
        help="cross-check plain-50 with wrk (default: if installed, not in --quick)",
    )
    p.add_argument("--no-wrk", action="store_true", help="no wrk cross-check")
    p.add_argument("--no-install", action="store_true", help="never install nginx or litellm")
    p.add_argument("--results", default=str(BENCH / "RESULTS.md"), help="'' to write nothing")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and logs of the targets")
    a = p.parse_args(argv)
    quick = a.quick
    a.duration = a.duration or (2.0 if quick else 5.0)
    a.rounds = a.rounds or (1 if quick else 2)
    a.grace = a.grace if a.grace is not None else (15.0 if quick else 30.0)
    a.soak = a.soak if a.soak is not None else (2000 if quick else 10_000)
    a.bill_rows = a.bill_rows if a.bill_rows is not None else (0 if quick else 1_000_000)
    a.wrk = not a.no_wrk and (a.wrk or (not quick and bool(wrk.binary())))
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = [t for t in a.targets if t not in TARGETS] + [
        s for s in a.scenarios if s not in SCENARIOS
    ]
    if unknown:
        p.error(f"unknown target or scenario: {', '.join(unknown)}")
    return a


def raise_fd_limit() -> None:
    # 500 streams through a proxy hold ~1000 sockets per process; children inherit this
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard)
        )


def load_for(target: Target, scenario: Scenario, duration: float, **kw) -> Load:
    return Load(
        target.url, target.key, scenario.stream, scenario.anthropic, scenario.model,
        scenario.concurrency, duration, **kw,
    )  # fmt: skip


async def sample_forever(samplers: dict, period: float = 0.1) -> None:
    n = 0
    while True:
        for sampler in samplers.values():
            sampler.sample(refresh_tree=n % 20 == 0)
        n += 1
        await asyncio.sleep(period)


async def start_targets(names: list[str], ctx: Ctx, mock: MockTarget) -> tuple[list, dict]:
    running, skipped = [], {}
    for name in names:
        if name == "mock":
            running.append(mock)
            continue
        target = TARGETS[name](name)
        STARTED.append(target)
        print(f"starting {name} ...", flush=True)
        try:
            await target.start(ctx)
        except Skip as exc:
            skipped[name] = str(exc)
            print(f"  {name}: skipped: {exc}", flush=True)
            continue
        running.append(target)
        print(f"  {name} {target.version} at {target.url} (pid {target.pid})", flush=True)
        for note in target.notes:
            print(f"  {name}: {note}", flush=True)
    return running, skipped


async def warm_up(targets: list, mock: MockTarget, seconds: float) -> None:
    await mock.configure(**SCENARIOS["stream-50"].mock_knobs())
    for target in targets:
        for scenario in (SCENARIOS["plain-50"], SCENARIOS["stream-50"]):
            await run_load(load_for(target, scenario, seconds))


@dataclass
class Cell:
    """Everything measured for one target in one scenario, over all rounds."""

    result: Result
    cpu: float = 0.0
    peak_mb: float = 0.0


async def run_round(target, scenario: Scenario, sampler: Sampler, duration: float, grace: float):
    sampler.sample(refresh_tree=True)
    sampler.reset_peak()
    cpu_before = sampler.cpu()
    result = await run_load(load_for(target, scenario, duration, grace=grace))
    cpu = sampler.cpu() - cpu_before
    sampler.sample()
    return result, cpu, sampler.peak


async def measure(targets: list, scenarios: list, mock: MockTarget, samplers: dict, args) -> dict:
    cells: dict[tuple, Cell] = {}
    for scenario in scenarios:
        await mock.configure(**scenario.mock_knobs())
        for n in range(args.rounds):
            # rotate who goes first, so no target always runs on a cooler machine
            order = targets[n % len(targets) :] + targets[: n % len(targets)]
            for target in order:
                sampler = samplers[target.name]
                result, cpu, peak = await run_round(
                    target, scenario, sampler, args.duration, args.grace
                )
                cell = cells.setdefault((target.name, scenario.name), Cell(Result()))
                cell.result.merge(result)
                cell.cpu += cpu
                cell.peak_mb = max(cell.peak_mb, peak)
                errors = sum(result.errors.values())
                print(
                    f"  {scenario.name:<16} round {n + 1}  {target.name:<9}"
                    f" {result.rps:9,.0f} req/s  errors {errors}",
                    flush=True,
                )
                await asyncio.sleep(0.3)  # let closed sockets drain between rounds
    return cells


def table_rows(cells: dict, targets: list, scenarios: list) -> list[dict]:
    rows = []
    for scenario in scenarios:
        floor = cells.get(("mock", scenario.name))
        for target in targets:
            cell = cells.get((target.name, scenario.name))
            if cell is None:
                continue
            r = cell.result
            rows.append({
                "target": target.name,
                "scenario": scenario.name,
                "rps": r.rps,
                "ratio": r.rps / floor.result.rps if floor and floor.result.rps else None,
                "p50_ms": percentile(r.latencies, 0.5) * 1000,
                "p99_ms": percentile(r.latencies, 0.99) * 1000,
                "ttfb_p50_ms": percentile(r.ttfbs, 0.5) * 1000,
                "ttfb_p99_ms": percentile(r.ttfbs, 0.99) * 1000,
                "errors": sum(r.errors.values()),
                "error_kinds": dict(r.errors),
                "rss_mb": cell.peak_mb,
                "cpu_ms": cell.cpu / r.completed * 1000 if r.completed else None,
            })  # fmt: skip
    return rows


async def soak(target: XaiproxyTarget, mock: MockTarget, sampler: Sampler, total: int) -> dict:
    """`total` 20-chunk streams at 50 concurrent; RSS after warm-up vs at the end."""
    scenario = SCENARIOS["stream-50"]
    await mock.configure(**scenario.mock_knobs())
    warm = max(500, total // 10)
    print(f"soak: {warm} warm-up + {total} streams through xaiproxy ...", flush=True)
    await run_load(load_for(target, scenario, 0, max_requests=warm))
    await asyncio.sleep(1)
    rss_warm = sampler.sample(refresh_tree=True)
    sampler.reset_peak()
    result = await run_load(load_for(target, scenario, 0, max_requests=total, grace=60))
    await asyncio.sleep(1)
    rss_end = sampler.sample()
    return {
        "requests": result.completed,
        "rps": result.rps,
        "errors": dict(result.errors),
        "rss_warm_mb": rss_warm,
        "rss_end_mb": rss_end,
        "rss_peak_mb": sampler.peak,
        "growth_mb": rss_end - rss_warm,
    }


def soak_text(s: dict) -> str:
    growth = s["growth_mb"] / s["rss_warm_mb"] * 100 if s["rss_warm_mb"] else 0
    return (
        f"{s['requests']:,} streams at {s['rps']:,.0f} req/s, errors {s['errors'] or 0}; "
        f"RSS after warm-up {s['rss_warm_mb']:.1f} MB, at the end {s['rss_end_mb']:.1f} MB "
        f"(growth {s['growth_mb']:+.1f} MB, {growth:+.1f}%), peak {s['rss_peak_mb']:.1f} MB"
    )


def notes_text(rows: list, targets: list, skipped: dict) -> str:
    lines = [f"- {name}: skipped: {why.splitlines()[0]}" for name, why in skipped.items()]
    lines += [f"- {t.name}: {note}" for t in targets for note in t.notes]
    lines += [
        f"- {r['target']} / {r['scenario']} errors: {r['error_kinds']}" for r in rows if r["errors"]
    ]
    lines += [
        "- req/s counts requests that ended properly (status 200 and, for streams, `data: [DONE]`);"
        " the load is closed-loop: each of N connections sends its next request when one ends.",
        "- TTFB is the time to the first body byte; CPU ms/req is the target's utime+stime"
        " (with its children) over the rounds divided by the requests; peak RSS is sampled every"
        " 0.1 s over the target's process tree.",
        "- The mock's own settings are the same for every target: 20 chunks of 16 characters;"
        " stream-500-20ms waits 20 ms between chunks.",
        "- Where xaiproxy's CPU goes, and what floor aiohttp sets: bench/README.md,"
        " 'Where the time goes'.",
    ]
    return "\n".join(lines)


def write_results(path: str, env: dict, rows: list, sections: list) -> None:
    if not path:
        return
    Path(path).write_text(report.results_markdown(env, report.markdown_table(rows), sections))
    print(f"wrote {path}")


async def cross_check(targets: list, mock: MockTarget, ctx: Ctx, seconds: float) -> list:
    if not wrk.binary():
        print("wrk: not installed, no cross-check")
        return []
    await mock.configure(**SCENARIOS["plain-50"].mock_knobs())
    return [wrk.run(t.name, t.url, t.key, ctx.tmp, 50, seconds) for t in targets]


async def benchmark(args, ctx: Ctx, mock: MockTarget) -> None:
    targets, skipped = await start_targets(args.targets, ctx, mock)
    if not targets:
        raise SystemExit("no target could be started")
    samplers = {t.name: Sampler(t.pid) for t in targets}
    sampling = asyncio.create_task(sample_forever(samplers))
    scenarios = [SCENARIOS[s] for s in args.scenarios]
    print("warming up ...", flush=True)
    await warm_up(targets, mock, 0.5 if args.quick else 1.0)
    cells = await measure(targets, scenarios, mock, samplers, args)
    rows = table_rows(cells, targets, scenarios)
    sections = []
    xai = next((t for t in targets if t.name == "xaiproxy"), None)
    if xai and args.soak:
        sections.append(
            (
                "Soak through xaiproxy",
                soak_text(await soak(xai, mock, samplers["xaiproxy"], args.soak)),
            )
        )
    if args.wrk:
        wrk_rows = await cross_check(targets, mock, ctx, args.duration)
        columns = [
            c
            for c in report.COLUMNS
            if c[0] in ("target", "scenario", "rps", "p50_ms", "p99_ms", "errors")
        ]
        if wrk_rows:
            sections.append(("Cross-check with wrk", report.markdown_table(wrk_rows, columns)))
    sampling.cancel()
    versions = {t.name: t.version for t in targets if t.name != "mock"} | {"wrk": wrk.version()}
    for t in targets:
        if t is not mock:
            t.stop()  # free the cores for the bill timing
    if args.bill_rows and "xaiproxy" in args.targets:
        sections.append(("/x-bill over a big usage table", await bill_section(ctx, args.bill_rows)))
    sections.append(("Notes", notes_text(rows, targets, skipped)))
    print()
    print(report.text_table(rows))
    for title, text in sections:
        print(f"\n{title}\n{text}")
    write_results(args.results, report.environment(versions), rows, sections)


async def bill_section(ctx: Ctx, rows: int) -> str:
    try:
        return bill_bench.bill_text(await bill_bench.run(ctx, rows))
    except Skip as exc:
        return f"- skipped: {exc}"


async def amain(args) -> None:
    raise_fd_limit()
    ctx = Ctx(Path(tempfile.mkdtemp(prefix="xaibench-")), allow_install=not args.no_install)
    mock = MockTarget("mock")
    STARTED.append(mock)
    try:
        print(f"starting mock upstream (temp dir {ctx.tmp}) ...", flush=True)
        await mock.start(ctx)
        await benchmark(args, ctx, mock)
    finally:
        stop_all()
        if args.keep_tmp:
            print(f"kept {ctx.tmp}")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)


def stop_all() -> None:
    for target in reversed(STARTED):
        target.stop()


def main(argv=None) -> None:
    args = parse_args(argv)
    # SIGTERM takes the same way out as Ctrl-C, through the finally blocks
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        uvloop.run(amain(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
