"""Time GET /x-bill over a database holding a million usage records.

1. Start xaiproxy once on a fresh database (so the schema exists), add a few
   accounts and send a few requests through the mock (a real usage row shows
   how the gateway writes times and costs), then stop it.
2. Insert N rows into `usage` with sqlite3 directly. The column list is read
   at run time from PRAGMA table_info(usage); every NOT NULL column is filled.
3. Start xaiproxy again on that database and time GET /x-bill (root key).

Run: .venv/bin/python bench/bill_bench.py --rows 1000000
"""

import argparse
import asyncio
import datetime
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import uvloop
from targets import Ctx, MockTarget, Skip
from xai import XaiproxyTarget, call

from xaiproxy.store.sqlite import DAILY_REBUILD_SQL

MODELS = ["gpt-4o-mini", "gpt-4o", "claude-3-5-haiku-latest", "claude-sonnet-4-0", "o3-mini"]
PRICES = {
    m: p
    for m, p in zip(MODELS, [(0.15, 0.6), (2.5, 10), (0.8, 4), (3, 15), (1.1, 4.4)], strict=True)
}
UTC = datetime.UTC


def usd(model: str, prompt: int, completion: int) -> float:
    price_in, price_out = PRICES.get(model, PRICES["gpt-4o-mini"])
    return (prompt * price_in + completion * price_out) / 1e6


def month_span() -> tuple[float, float]:
    now = datetime.datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.timestamp(), now.timestamp()


def time_maker(sample, decl: str):
    """A function epoch-seconds → a value in the same shape as `sample`."""
    if isinstance(sample, str):
        if len(sample) == 10:
            return lambda t: datetime.datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")
        fmt = (
            "%Y-%m-%d"
            + ("T" if "T" in sample else " ")
            + "%H:%M:%S"
            + (".%f" if "." in sample[19:] else "")
        )
        suffix = "Z" if sample.endswith("Z") else ("+00:00" if sample.endswith("+00:00") else "")
        return lambda t: datetime.datetime.fromtimestamp(t, UTC).strftime(fmt) + suffix
    if isinstance(sample, int) and 19000101 <= sample <= 30001231:  # a yyyymmdd day number
        return lambda t: int(datetime.datetime.fromtimestamp(t, UTC).strftime("%Y%m%d"))
    if isinstance(sample, (int, float)):
        scale = 1000 if sample > 1e11 else 1
        return (lambda t: int(t * scale)) if isinstance(sample, int) else (lambda t: t * scale)
    if "INT" in decl:
        return int
    if any(k in decl for k in ("REAL", "FLOA", "DOUB", "NUM")):
        return float
    return lambda t: datetime.datetime.fromtimestamp(t, UTC).isoformat()


def cost_maker(name: str, sample, sample_row: dict, decl: str):
    """USD → the unit the gateway uses, learned from the sample row where possible."""
    # guess: an integer cost is nano-USD when named *_n (xaiproxy's cost_n), else micro-USD
    scale = 1.0 if "INT" not in decl else (1e9 if name.endswith("_n") else 1e6)
    prompt = next(
        (v for k, v in sample_row.items() if "prompt" in k or k.startswith("input")), None
    )
    completion = next(
        (v for k, v in sample_row.items() if "completion" in k or k.startswith("output")), None
    )
    if (
        isinstance(sample, (int, float))
        and sample > 0
        and isinstance(prompt, int)
        and isinstance(completion, int)
    ):
        base = usd(str(sample_row.get("model", "gpt-4o-mini")), prompt, completion)
        scale = sample / base if base else scale
    if isinstance(sample, int) or (sample is None and "INT" in decl):
        return lambda row: int(round(row["usd"] * scale))
    return lambda row: row["usd"] * scale


def is_time(name: str) -> bool:
    names = {"ts", "t", "time", "timestamp", "created", "date", "day", "at", "started", "ended"}
    return name in names or name.endswith(("_at", "_ts", "_time", "_day", "_date"))


def column_maker(col: dict, sample_row: dict, unique: set):
    """How to fill one column: a function row → value, or None to leave it to its default."""
    name, decl = col["name"].lower(), (col["type"] or "").upper()
    sample = sample_row.get(col["name"])
    if col["name"] in unique:  # e.g. a request id: a copied sample would collide
        return (
            (lambda row: 10**9 + row["i"]) if "INT" in decl else (lambda row: f"bench-{row['i']}")
        )
    if is_time(name):
        make = time_maker(sample, decl)
        return lambda row: make(row["t"])
    rules = [
        (name in ("account_id", "user_id", "uid", "aid", "account"), lambda row: row["account"]),
        (name == "dna", lambda row: row["dna"]),
        ("model" in name, lambda row: row["model"]),
        ("cache" in name and "creat" in name, lambda row: 0),
        ("cache" in name, lambda row: row["cached"]),
        ("total" in name and "token" in name, lambda row: row["prompt"] + row["completion"]),
        ("prompt" in name or name.startswith("input"), lambda row: row["prompt"]),
        ("completion" in name or name.startswith("output"), lambda row: row["completion"]),
        ("latency" in name or "duration" in name or "elapsed" in name, lambda row: row["latency"]),
        ("estimat" in name, lambda row: 0),
        (name == "path", lambda row: "/v1/chat/completions"),
        (name == "request_id", lambda row: f"bench-{row['i']}"),
    ]
    for matched, make in rules:
        if matched:
            return make
    if "cost" in name or "spend" in name or "amount" in name:
        return cost_maker(name, sample, sample_row, decl)
    if sample is not None:
        return lambda row: sample
    if col["dflt_value"] is not None or not col["notnull"]:
        return None
    fallback = {"status": 200, "level": 1, "oid": 1}.get(name, 1 if name.endswith("_id") else 0)
    if "INT" in decl or any(k in decl for k in ("REAL", "FLOA", "DOUB", "NUM")):
        return lambda row: fallback
    return lambda row: "" if "BLOB" not in decl else b""


def semantic_rows(n: int, accounts: dict):
    """Plausible usage, in time order over the current month so far."""
    start, end = month_span()
    step = (end - start) / n
    rand = random.Random(42)
    ids = list(accounts)
    for i in range(n):
        model = MODELS[rand.randrange(len(MODELS))]
        prompt, completion = rand.randint(20, 2000), rand.randint(5, 800)
        account = ids[rand.randrange(len(ids))]
        yield {
            "i": i,
            "t": start + i * step,
            "account": account,
            "dna": accounts[account],
            "model": model,
            "prompt": prompt,
            "completion": completion,
            "cached": prompt // 4 if rand.random() < 0.2 else 0,
            "latency": rand.randint(80, 4000),
            "usd": usd(model, prompt, completion),
        }


def unique_columns(conn: sqlite3.Connection) -> set:
    found = set()
    for index in conn.execute("PRAGMA index_list(usage)"):
        if index["unique"] and index["origin"] != "pk":
            found |= {c["name"] for c in conn.execute(f"PRAGMA index_info('{index['name']}')")}
    return found


def account_dnas(conn: sqlite3.Connection, ids: list) -> dict:
    """{account id: DNA} of a few accounts that exist, from the accounts table if it has one."""
    try:
        found = {r["id"]: r["dna"] for r in conn.execute("SELECT id, dna FROM accounts LIMIT 10")}
    except sqlite3.Error:
        found = {}
    return found or {i: ".1." if i == 1 else f".1.{i}." for i in ids}


def fill_usage(db: Path, rows: int, ids: list) -> str:
    """Insert `rows` usage records; returns a note on the columns used."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    accounts = account_dnas(conn, ids)
    cols = [dict(c) for c in conn.execute("PRAGMA table_info(usage)")]
    if not cols:
        raise Skip("the database has no `usage` table")
    sample = conn.execute("SELECT * FROM usage ORDER BY rowid DESC LIMIT 1").fetchone()
    sample_row = dict(sample) if sample else {}
    unique = unique_columns(conn)
    makers = {}
    for col in cols:
        if col["pk"] and "INT" in (col["type"] or "").upper():
            continue  # the rowid: SQLite numbers it
        maker = column_maker(col, sample_row, unique)
        if maker is not None:
            makers[col["name"]] = maker
    names = list(makers)
    funcs = list(makers.values())
    sql = f"INSERT INTO usage ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    conn.execute("PRAGMA synchronous=OFF")
    with conn:
        conn.executemany(
            sql, (tuple(f(row) for f in funcs) for row in semantic_rows(rows, accounts))
        )
    rebuild_rollup(conn)
    conn.close()
    return f"accounts {list(accounts)}; filled columns: {', '.join(names)}" + (
        "" if sample_row else " (no sample row: guessed formats)"
    )


def rebuild_rollup(conn: sqlite3.Connection) -> None:
    """Rows written here bypass the gateway's writer, which keeps usage_daily: rebuild it."""
    has = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'usage_daily'").fetchone()
    trigger = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'usage_rollup'"
    ).fetchone()
    if has and not trigger:
        with conn:
            conn.execute("DELETE FROM usage_daily")
            conn.execute(DAILY_REBUILD_SQL)


async def prepare(ctx: Ctx, db: Path) -> tuple[str, list, list]:
    """A schema and a few real accounts and usage rows; (root key, account ids, notes)."""
    xai = XaiproxyTarget("xaiproxy-bill", db=db)
    try:
        await xai.start(ctx)
        accounts = [1] + ([xai.user_id] if xai.user_id else [])
        async with xai.session() as s:
            for n in range(3):
                user = await xai.add_user(s, f"bill-user-{n}", 100)
                if user and user[1]:
                    accounts.append(user[1])
        await asyncio.sleep(1.5)  # let the batched writer flush the smoke requests' usage
    finally:
        xai.stop()
    return xai.root_key, [a for a in accounts if isinstance(a, int)] or [1], xai.notes


async def time_bill(ctx: Ctx, db: Path, root_key: str, runs: int) -> dict:
    xai = XaiproxyTarget("xaiproxy-bill", db=db, root_key=root_key, setup=False)
    timings, status, body = [], 0, None
    try:
        t0 = time.perf_counter()
        await xai.start(ctx)
        startup = time.perf_counter() - t0
        async with xai.session() as s:
            for _ in range(runs):
                t = time.perf_counter()
                status, body = await call(s, "GET", xai.url + "/x-bill")
                timings.append((time.perf_counter() - t) * 1000)
    finally:
        xai.stop()
    total = body.get("total_usage") if isinstance(body, dict) else None
    return {
        "status": status,
        "first_ms": timings[0] if timings else None,
        "median_ms": statistics.median(timings) if timings else None,
        "startup_s": startup,
        "total_usage": total,
        "answer": None if status == 200 else str(body)[:200],
    }


async def run(ctx: Ctx, rows: int = 1_000_000, runs: int = 5) -> dict:
    """The whole measurement; `ctx.mock_url` must point at a running mock."""
    db = ctx.tmp / "bill.db"
    root_key, accounts, notes = await prepare(ctx, db)
    print(f"bill: inserting {rows:,} usage rows ...", flush=True)
    t0 = time.perf_counter()
    notes.append(fill_usage(db, rows, accounts))
    insert_s = time.perf_counter() - t0
    print(f"bill: inserted in {insert_s:.1f} s; timing GET /x-bill x{runs} ...", flush=True)
    result = await time_bill(ctx, db, root_key, runs)
    if result["status"] != 200:
        notes.append(
            f"GET /x-bill answered {result['status']} (not there yet?): {result['answer']}"
        )
    return {
        "rows": rows,
        "insert_s": insert_s,
        "db_mb": db.stat().st_size / 2**20,
        "notes": notes,
        **result,
    }


def bill_text(b: dict) -> str:
    lines = [
        f"GET /x-bill (root key, current month) over {b['rows']:,} usage rows "
        f"({b['db_mb']:.0f} MB database): status {b['status']}, "
        + (
            f"median {b['median_ms']:.1f} ms, first {b['first_ms']:.1f} ms"
            if b["status"] == 200
            else "no timing"
        ),
        f"gateway start on that database: {b['startup_s']:.1f} s; rows inserted in {b['insert_s']:.1f} s",
    ]
    if b.get("total_usage") is not None:
        lines.append(f"total_usage in the answer: {b['total_usage']}")
    return "\n".join(["- " + line for line in lines + b["notes"]])


async def main(args: argparse.Namespace) -> None:
    ctx = Ctx(Path(tempfile.mkdtemp(prefix="xaibill-")))
    mock = MockTarget("mock")
    try:
        await mock.start(ctx)
        print(bill_text(await run(ctx, args.rows, args.runs)))
    except Skip as exc:
        print(f"bill: skipped: {exc}")
    finally:
        mock.stop()
        if args.keep:
            print(f"kept {ctx.tmp}")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=5, help="how many times to time GET /x-bill")
    p.add_argument(
        "--keep", action="store_true", help="keep the temp dir with the database and logs"
    )
    uvloop.run(main(p.parse_args()))
