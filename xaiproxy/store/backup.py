"""Online backup of the SQLite database: a consistent copy while the gateway writes.

SQLite's backup API copies every page inside one read transaction, so the copy is the
database as of one commit (what the batched writer had committed; at most its last
flush interval is still in memory). In WAL mode the gateway's writer goes on meanwhile.
The copy is written beside the target, checked, made a standalone file (no -wal), and
only then renamed into place, so a half-written backup never carries the target's name.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path


class BackupError(Exception):
    """The backup was not made; the message says why."""


@dataclass(frozen=True, slots=True)
class Copy:
    path: str
    schema: int
    accounts: int
    size: int


def backup(db: str, target: str) -> Copy:
    """Copy the database at `db` to `target` (replaced atomically if it exists)."""
    if db.split("://", 1)[0].lower() in ("postgresql", "postgres"):
        raise BackupError("the database is PostgreSQL: back it up with pg_dump (docs/SCALING.md)")
    src, dst = Path(db), Path(target)
    if not src.is_file():
        raise BackupError(f"no database at {db}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise BackupError("the backup would overwrite the database itself")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    os.close(fd)  # mkstemp made it 0600: the copy holds keys and balances
    try:
        copy = _copy(src, Path(part))
        _fsync(part)
        os.replace(part, dst)
        _fsync(dst.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    return Copy(str(dst), copy.schema, copy.accounts, dst.stat().st_size)


def _copy(src: Path, part: Path) -> Copy:
    # mode=rw: never create an empty database where the operator mistyped a path.
    uri = "file:" + urllib.parse.quote(str(src.absolute())) + "?mode=rw"
    try:
        source = sqlite3.connect(uri, uri=True)
        target = sqlite3.connect(part)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {src}: {exc}") from None
    try:
        source.execute("PRAGMA busy_timeout=10000")
        source.backup(target)  # all pages in one step: one snapshot
        target.execute("PRAGMA journal_mode=DELETE")
        verdict = target.execute("PRAGMA integrity_check").fetchone()[0]
        if verdict != "ok":
            raise BackupError(f"the copy failed its integrity check: {verdict}")
        schema = target.execute("PRAGMA user_version").fetchone()[0]
        accounts = _count(target, "accounts")
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {src} failed: {exc}") from None
    finally:
        target.close()
        source.close()
    return Copy(str(part), schema, accounts, 0)


def _count(conn: sqlite3.Connection, table: str) -> int:
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:  # not an xaiproxy database (yet)
        return 0


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
