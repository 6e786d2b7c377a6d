"""Tables for the terminal and bench/RESULTS.md."""

import datetime
import importlib.metadata
import os
import platform
import shlex
import sys

COLUMNS = [
    ("target", "target", "{}"),
    ("scenario", "scenario", "{}"),
    ("rps", "req/s", "{:,.0f}"),
    ("ratio", "× floor", "{:.2f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("ttfb_p50_ms", "TTFB p50 ms", "{:.1f}"),
    ("ttfb_p99_ms", "TTFB p99 ms", "{:.1f}"),
    ("errors", "errors", "{}"),
    ("rss_mb", "peak RSS MB", "{:.0f}"),
    ("cpu_ms", "CPU ms/req", "{:.3f}"),
]


def cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return fmt.format(value)


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" if i < 2 else "--:" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(cell(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def text_table(rows: list[dict], columns=COLUMNS) -> str:
    grid = [[title for _, title, _ in columns]]
    grid += [[cell(r.get(k), f) for k, _, f in columns] for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(grid):
        parts = [
            v.ljust(w) if i < 2 else v.rjust(w)
            for i, (v, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(parts))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(extra: dict) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        "machine": f"{os.cpu_count()} cores, {cpu_model()}, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "aiohttp": package_version("aiohttp"),
        "uvloop": package_version("uvloop"),
        "orjson": package_version("orjson"),
    }
    return env | {k: v for k, v in extra.items() if v}


def results_markdown(env: dict, table: str, sections: list[tuple[str, str]]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Written by `bench/run.py` (see `bench/README.md`); the latest run replaces it.",
        "Numbers from one machine, with the load generator, the mock and the target",
        "sharing its cores: compare targets within a run, not across machines.",
        "",
        *[f"- **{k}**: `{v}`" if k == "command" else f"- **{k}**: {v}" for k, v in env.items()],
        "",
        "## Throughput and latency",
        "",
        table,
    ]
    for title, text in sections:
        lines += ["", f"## {title}", "", text]
    return "\n".join(lines) + "\n"
