"""Plugin tables: the declarations plugins migrate, checked here once for every backend.

A plugin declares its tables as data (`ops.Table`, `ops.AddColumn`); each backend
renders the DDL and the generic row ops (`RowInsert`, `RowUpsert`, `RowDelete`, and
the reads `rows` / `count_rows`) in its own SQL. Only names declared here reach SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import orjson

from . import ops as o

NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def step_items(step) -> tuple:
    """A migration step's declarations: one Table / AddColumn, or a list of them."""
    items = (step,) if isinstance(step, o.Table | o.AddColumn) else tuple(step)
    if isinstance(step, str) or not items:
        raise ValueError("a step is a Table, an AddColumn, or a list of them (not SQL)")
    for item in items:
        if not isinstance(item, o.Table | o.AddColumn):
            raise ValueError(f"a step holds Table and AddColumn, not {type(item).__name__}")
    return items


def _name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"{kind} name {name!r}: lowercase letters, digits and _ only")
    return name


def _column(col: o.Column) -> None:
    _name("column", col.name)
    if col.type not in o.TYPES:
        raise ValueError(f"column {col.name}: type {col.type!r} is not one of {o.TYPES}")


class Tables:
    """The plugin tables a store knows, as declared by the migration steps so far."""

    def __init__(self) -> None:
        self.known: dict[str, o.Table] = {}

    def declare(self, items: Iterable) -> None:
        """Fold a step's declarations in (a table declared again must not change)."""
        for item in items:
            if isinstance(item, o.Table):
                self._table(item)
            else:
                self._add_column(item)

    def _table(self, table: o.Table) -> None:
        _name("table", table.name)
        names = [c.name for c in table.columns]
        for col in table.columns:
            _column(col)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"table {table.name}: columns must be named once each")
        for cols in (table.primary_key, *table.indexes):
            if not cols or set(cols) - set(names):
                raise ValueError(f"table {table.name}: key or index on unknown columns {cols}")
        old = self.known.get(table.name)
        if old is not None and old != table:
            raise ValueError(f"table {table.name} is declared twice, differently")
        self.known[table.name] = table

    def _add_column(self, add: o.AddColumn) -> None:
        table = self.table(add.table)
        _column(add.column)
        if any(c.name == add.column.name for c in table.columns):
            raise ValueError(f"table {add.table} already has a column {add.column.name}")
        if not add.column.null and add.column.default is None:
            raise ValueError(f"added column {add.column.name}: give it a default or null=True")
        self.known[add.table] = o.Table(
            table.name, (*table.columns, add.column), table.primary_key, table.indexes
        )

    def table(self, name: str) -> o.Table:
        table = self.known.get(name)
        if table is None:
            raise ValueError(f"{name!r} is not a declared plugin table")
        return table

    def columns(self, name: str, wanted: Iterable[str]) -> dict[str, o.Column]:
        """The named columns of a table; an unknown one is an error (never reaches SQL)."""
        cols = {c.name: c for c in self.table(name).columns}
        unknown = [w for w in wanted if w not in cols]
        if unknown:
            raise ValueError(f"table {name} has no column {unknown[0]!r}")
        return cols

    def encode(self, name: str, row: dict) -> dict:
        """A row's values as stored: JSON as text, bools as 0/1."""
        cols = self.columns(name, row)
        return {k: encode(cols[k], v) for k, v in row.items()}

    def decode(self, name: str, row: dict) -> dict:
        cols = self.columns(name, row)
        return {k: decode(cols[k], v) for k, v in row.items()}


def encode(col: o.Column, value):
    if value is None:
        return None
    if col.type == "json":
        return orjson.dumps(value).decode()
    if col.type == "bool":
        return int(bool(value))
    return value


def decode(col: o.Column, value):
    if value is None:
        return None
    if col.type == "json":
        return orjson.loads(value)
    if col.type == "bool":
        return bool(value)
    return value


# -- DDL of a declaration, for any backend: only the type names differ ----------------
def _literal(col: o.Column) -> str:
    """A column default as SQL text (DDL takes no parameters)."""
    value = encode(col, col.default)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def _column_sql(col: o.Column, types: dict[str, str]) -> str:
    sql = f"{col.name} {types[col.type]}"
    if not col.null:
        sql += " NOT NULL"
    if col.default is not None:
        sql += f" DEFAULT {_literal(col)}"
    return sql


def ddl(item: o.Table | o.AddColumn, types: dict[str, str]) -> list[str]:
    """A declaration's statements: create-if-absent, so adopting a table is a no-op."""
    if isinstance(item, o.AddColumn):
        return [f"ALTER TABLE {item.table} ADD COLUMN {_column_sql(item.column, types)}"]
    parts = [_column_sql(c, types) for c in item.columns]
    if item.primary_key:
        parts.append(f"PRIMARY KEY ({', '.join(item.primary_key)})")
    out = [f"CREATE TABLE IF NOT EXISTS {item.name} ({', '.join(parts)})"]
    for cols in item.indexes:
        name = "_".join((item.name, *cols))
        out.append(f"CREATE INDEX IF NOT EXISTS {name} ON {item.name} ({', '.join(cols)})")
    return out
