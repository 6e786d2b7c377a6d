"""Optional cross-check of the plain scenario with wrk (a C load generator).

Our load generator is Python and shares the machine's cores; wrk shows whether
it, rather than the target, was the limit. Used only where `wrk` is installed.
"""

import re
import shutil
import subprocess
from pathlib import Path

import orjson

SCRIPT = """\
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def binary() -> str:
    return shutil.which("wrk") or ""


def version() -> str:
    if not binary():
        return ""
    out = subprocess.run([binary(), "-v"], capture_output=True, text=True, timeout=10)
    return (out.stdout + out.stderr).split("\n")[0].strip()


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse(out: str) -> dict:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, errs.groups())) if errs else 0)
    seconds = to_ms(done.group(2) + done.group(3)) / 1000 if done else 0
    # wrk's own Requests/sec counts error answers too: count the good ones only
    good = int(done.group(1)) - (int(bad.group(1)) if bad else 0) if done else 0
    return {
        "rps": good / seconds if seconds else None,
        "p50_ms": to_ms(p50.group(1)) if p50 else None,
        "p99_ms": to_ms(p99.group(1)) if p99 else None,
        "errors": errors,
    }


def run(name: str, url: str, key: str, tmp: Path, concurrency: int, seconds: float) -> dict:
    """Non-stream chat completions at `concurrency` for `seconds` through wrk."""
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Say hello."}],
    }
    script = tmp / f"wrk-{name}.lua"
    script.write_text(SCRIPT.format(body=orjson.dumps(body).decode(), key=key))
    cmd = [
        binary(),
        "-t1",
        f"-c{concurrency}",
        f"-d{max(3, round(seconds))}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
    ]
    out = subprocess.run(
        cmd + [url + "/v1/chat/completions"], capture_output=True, text=True, timeout=seconds + 90
    )
    return {"target": name, "scenario": "plain-50 (wrk)", **parse(out.stdout)}
