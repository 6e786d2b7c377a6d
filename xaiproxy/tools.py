"""Local commands that need no running gateway: `init`, `prices`, `backup`."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from . import __version__, pricing
from . import settings as settings_mod
from .admin import table
from .store import backup

_SETTING_LINE = re.compile(r"^[a-z_]+\s*=")
PRICE_COLUMNS = ["Model", "Input", "Output", "CachedInput", "CacheWrite"]


def commented_config() -> str:
    """The shipped xaiproxy.toml with every setting commented out (so defaults can move)."""
    text = settings_mod.packaged("xaiproxy.toml").read_text(encoding="utf-8")
    lines = [("# " + line) if _SETTING_LINE.match(line) else line for line in text.splitlines()]
    head = [
        f"# Written by `xaiproxy init` ({__version__}). Each commented setting shows its",
        "# default; uncomment a line to change it. Start with:",
        "#   xaiproxy serve --config <this file>",
        "",
    ]
    return "\n".join(head + lines) + "\n"


def init(args: argparse.Namespace) -> int:
    target = Path(args.dir) / "xaiproxy.toml"
    if target.exists() and not args.force:
        print(f"xaiproxy: {target} exists; pass --force to replace it", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    # 0600: the file may come to hold secret_key.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(commented_config())
    print(f"wrote {target}\n  start with: xaiproxy serve --config {target}")
    return 0


def prices(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.load(args.config)
        text, source = pricing.read(settings.prices)
        table_ = pricing.parse(text, source)
    except (settings_mod.SettingsError, pricing.PricesError) as exc:
        print(f"xaiproxy: {exc}", file=sys.stderr)
        return 2
    if args.toml:
        sys.stdout.write(text)
        return 0
    if settings.prices:
        origin = "XAI_PRICES" if os.environ.get("XAI_PRICES") else f"prices in {settings.config}"
        source = f"{source} (set by {origin})"
    rows = [_price_row(name, entry) for name, entry in table_.table.items()]
    print(f"price table: {source}")
    print("USD per million tokens; owners override entries with PRICING (/x-config)\n")
    print(table(rows, PRICE_COLUMNS))
    return 0


def _price_row(name: str, entry: dict) -> dict:
    p = pricing.Price.of(entry)
    values = (name, p.input, p.output, p.cached_input, p.cache_write)
    return dict(zip(PRICE_COLUMNS, values, strict=True))


def run_backup(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.load(args.config, db=args.db)
        copy = backup.backup(settings.db, args.path)
    except (settings_mod.SettingsError, backup.BackupError) as exc:
        print(f"xaiproxy: {exc}", file=sys.stderr)
        return 1
    print(
        f"backup of {settings.db} written to {copy.path}: schema {copy.schema},"
        f" {copy.accounts} accounts, {copy.size} bytes, integrity ok"
    )
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("init", help="write a commented xaiproxy.toml to start from")
    p.add_argument("dir", nargs="?", default=".", help="directory for xaiproxy.toml (default .)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=init)
    p = sub.add_parser("prices", help="show the price table in use and where it comes from")
    p.add_argument("--config", help="TOML config file (XAI_CONFIG)")
    p.add_argument("--toml", action="store_true", help="print the table's file as it is")
    p.set_defaults(func=prices)
    p = sub.add_parser("backup", help="copy the SQLite database, online, to PATH")
    p.add_argument("path", help="file to write (replaced atomically if it exists)")
    p.add_argument("--db", help="SQLite file (XAI_DB, default ./data/xaiproxy.db)")
    p.add_argument("--config", help="TOML config file (XAI_CONFIG)")
    p.set_defaults(func=run_backup)
