"""The store: typed ops in, named reads out; SQL only inside this package's backends.

`create(db)` picks the backend from the `db` setting: a path (or `sqlite:///path`) is
SQLite; a `postgresql://` (or `postgres://`) URL is PostgreSQL (`postgres.py`, for many
instances). A backend is a module implementing `base.Store`, added to `create`, and
passing `tests/store/`.
"""

from __future__ import annotations

from . import ops
from .base import Store
from .ops import UsageRecord

__all__ = ["Store", "UsageRecord", "create", "ops"]


def create(db: str, flush_interval: float = 0.2) -> Store:
    """The store a `db` setting names."""
    scheme = db.split("://", 1)[0] if "://" in db else ""
    if scheme in ("", "sqlite"):
        from .sqlite import SQLiteStore

        return SQLiteStore(db.removeprefix("sqlite://"), flush_interval)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(db, flush_interval)
    raise ValueError(
        f"db {scheme}://… is not a supported store (supported: a SQLite path, postgresql://)"
    )
