"""The seams hold: SQL only inside xaiproxy/store/, plugins only on the documented interface."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQL_RE = re.compile(
    r"\bSELECT\b[^\"']*\bFROM\b|\bINSERT\s+(OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\b|\bCREATE\s+(TABLE|INDEX|TRIGGER|VIEW)\b|\bDROP\s+(TABLE|INDEX)\b"
    r"|\bPRAGMA\b|\bjson_each\b|\bON\s+CONFLICT\b|\bsqlite3\b|\baiosqlite\b"
)
# What a plugin may import from the core: the interface SPEC 8 documents (see plugins.py).
PLUGIN_INTERFACE = {
    "xaiproxy.state",  # the account and key views (Account, ProviderKey) and filters
    "xaiproxy.store.ops",  # the store's typed operations and read scopes
    "xaiproxy.ledger",  # money arithmetic: balances, units
    "xaiproxy.credentials",  # key generation, hashing, masking
    "xaiproxy.ownerconf",  # owner config parsing (the /x-config plugin)
    "xaiproxy.whitelists",  # list edit rules
    "xaiproxy.ssrf",  # the one SSRF rule, for provider URLs at add time
    "xaiproxy.idempotency",  # the Idempotency-Key guard for money movements
    "xaiproxy.vendors",  # the vendor types a provider key may have (SPEC 13)
    "xaiproxy.usage",  # reading usage (gw.usage): scopes, dates, rows
    "xaiproxy.api",  # Gateway, Call, RouteSpec, NO_QUERY, ApiError, hooks: from one place
}


def sources(*dirs: str):
    for d in dirs:
        yield from sorted((ROOT / d).rglob("*.py"))


def test_no_sql_outside_the_store():
    found = []
    for path in sources("xaiproxy", "plugins"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("xaiproxy/store/"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if SQL_RE.search(line):
                found.append(f"{rel}:{n}: {line.strip()[:100]}")
    assert not found, "SQL outside xaiproxy/store/:\n" + "\n".join(found)


def test_the_grep_finds_sql():
    """The pattern above is not blind: it catches the forms the store uses."""
    for text in (
        "SELECT id FROM news",
        "INSERT OR REPLACE INTO x",
        "UPDATE accounts SET a = ?",
        "DELETE FROM usage",
        "PRAGMA user_version",
    ):
        assert SQL_RE.search(text), text
    assert not SQL_RE.search("select the accounts from the tree; update the key")


def imported(path: Path) -> set[str]:
    """Every core name the file imports, dotted: `from a.b import c` gives a.b.c."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("xaiproxy.")}


def allowed(name: str) -> bool:
    return name in PLUGIN_INTERFACE or name.rsplit(".", 1)[0] in PLUGIN_INTERFACE


def test_plugins_import_only_the_interface():
    wrong = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sources("plugins")
        for name in sorted(imported(path))
        if not allowed(name)
    ]
    assert not wrong, "plugins import core internals:\n" + "\n".join(wrong)


def test_the_import_check_is_not_blind(tmp_path):
    bad = tmp_path / "p.py"
    bad.write_text("from xaiproxy.store import sqlite\nimport xaiproxy.relay\n")
    assert [n for n in sorted(imported(bad)) if not allowed(n)] == [
        "xaiproxy.relay",
        "xaiproxy.store.sqlite",
    ]


# JSON answers the gateway builds are made in one place; xaiproxy/testing is a fake upstream.
HAND_JSON_RE = re.compile(r"json_response\(|content_type=\"application/json\"")


def test_one_json_answer_helper():
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sources("xaiproxy", "plugins")
        if not path.relative_to(ROOT)
        .as_posix()
        .startswith(("xaiproxy/responses.py", "xaiproxy/testing/"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if HAND_JSON_RE.search(line)
    ]
    assert not found, "JSON answers built by hand (use xaiproxy.responses):\n" + "\n".join(found)
    assert HAND_JSON_RE.search('web.Response(body=b, content_type="application/json")')
