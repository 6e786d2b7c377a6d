"""The admin command line: `xaiproxy users|keys|config|bill`, a thin client of the HTTP API.

Every command calls the management API of a running gateway (stdlib urllib, no new
dependency) with `--url`/`--key` or `XAI_URL`/`XAI_KEY`. People get aligned tables;
scripts pass `--json` and get the gateway's answer as it came. Exit codes: 0 done,
1 the gateway refused (its error message is printed) or could not be reached,
2 the command line itself was wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
USER_COLUMNS = ["ID", "Name", "Email", "Level", "Status", "Balance", "Rates", "PartialKey"]
KEY_COLUMNS = ["ID", "Name", "Level", "Type", "Provider", "SecretKey", "Status", "Sleeping"]


class UsageError(Exception):
    """The command line is wrong: exit 2."""


class Failure(Exception):
    """The gateway refused or could not be reached: exit 1."""


# -- HTTP ------------------------------------------------------------------------
class Client:
    """Synchronous JSON calls to the management API."""

    def __init__(self, url: str, key: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout

    def call(
        self, method: str, path: str, body: Any = None, query: dict | None = None, headers=None
    ) -> tuple[Any, dict]:
        """(parsed JSON answer, response headers); Failure on any error status."""
        query = {k: v for k, v in (query or {}).items() if v not in (None, "")}
        url = (
            self.url
            + urllib.parse.quote(path)
            + ("?" + urllib.parse.urlencode(query) if query else "")
        )
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.key}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return _parse(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raise Failure(_error_text(exc.code, exc.read())) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Failure(
                f"cannot reach the gateway at {self.url} ({reason}); check --url or XAI_URL"
            ) from None


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def _error_text(status: int, raw: bytes) -> str:
    body = _parse(raw)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return f"{status} {err.get('code', '')}: {err.get('message', '')}"
    return f"{status}: {str(body)[:300]}"


# -- values ------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, objects), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(pairs: list[str] | None, what: str = "--set") -> dict:
    """["Field=value", ...] -> {"Field": parsed value}."""
    out = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"{what} takes Field=value, got {pair!r}")
        out[name.strip()] = parse_value(value)
    return out


# -- output -------------------------------------------------------------------------
def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value == value else "nan"
    if isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"))
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


def table(rows: list[dict], columns: list[str]) -> str:
    """Rows as an aligned text table with a header line."""
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def pairs_table(data: dict) -> str:
    """One object as aligned `Field  value` lines."""
    width = max((len(str(k)) for k in data), default=0)
    return "\n".join(f"{str(k).ljust(width)}  {cell(v)}" for k, v in data.items())


def _paging(headers: dict) -> str:
    total = headers.get("X-Total-Count")
    if total is None:
        return ""
    return f"page {headers.get('X-Page', 1)} of {headers.get('X-Total-Pages', 1)}, {total} in all"


def _print_list(items: list, headers: dict, columns: list[str]) -> None:
    if not items:
        print("(none)")
    else:
        print(table(items, columns))
    footer = _paging(headers)
    if footer:
        print(footer)


# -- commands -----------------------------------------------------------------------
def users_add(client: Client, args) -> Any:
    body = {"Name": args.name, "Email": args.email, "CreditGranted": args.credit}
    if args.days is not None:
        body["Days"] = args.days
    body |= parse_pairs(args.set)
    answer, _ = client.call("POST", "/x-users", body, headers=_idem(args))
    return answer, lambda: _print_change(answer, "created")


def users_list(client: Client, args) -> Any:
    path = "/x-dna" if args.all else "/x-users"
    query = {
        "name": args.name,
        "email": args.email,
        "level": args.level,
        "dna": args.dna,
        "page": args.page,
        "size": args.size,
    }
    items, headers = client.call("GET", path, query=query)
    return items, lambda: _print_list(items, headers, USER_COLUMNS)


def users_show(client: Client, args) -> Any:
    answer, headers = client.call("GET", f"/x-users/{args.ident}")
    if isinstance(answer, list):  # a filter such as L2 names several
        return answer, lambda: _print_list(answer, headers, USER_COLUMNS)
    return answer, lambda: print(pairs_table(answer))


def users_update(client: Client, args) -> Any:
    body = parse_pairs(args.set)
    if args.credit is not None:
        body["CreditGranted"] = args.credit
    if args.days is not None:
        body["Days"] = args.days
    if not body:
        raise UsageError("nothing to update: give --set Field=value (or --credit)")
    answer, _ = client.call("PUT", f"/x-users/{args.ident}", body, headers=_idem(args))
    return answer, lambda: _print_change(answer, "updated")


def users_delete(client: Client, args) -> Any:
    answer, _ = client.call("DELETE", f"/x-users/{args.ident}")
    return answer, lambda: _print_change(answer, "deleted")


def _print_change(answer: dict, verb: str) -> None:
    user = answer.get("User") or {}
    print(f"{verb} user {user.get('ID', '?')}")
    if user.get("SecretKey"):
        print(f"SecretKey: {user['SecretKey']}")
        print("  (shown once: store it now)")
    if user.get("Updates"):
        print(pairs_table(user["Updates"]))
    parent = answer.get("Parent")
    if isinstance(parent, dict) and "Balance" in parent:
        balance = parent["Balance"]
        print(f"your balance: {'unlimited' if balance is None else cell(balance)}")


def _idem(args) -> dict:
    return {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}


def keys_add(client: Client, args) -> Any:
    secret = sys.stdin.readline().strip() if args.secret == "-" else args.secret
    body = {"SecretKey": secret, "Level": args.level, "Provider": args.provider}
    if args.name is not None:
        body["Name"] = args.name
    if args.disabled:
        body["Status"] = False
    answer, _ = client.call("POST", "/x-keys", body)
    return answer, lambda: _print_key(answer, "added")


def keys_list(client: Client, args) -> Any:
    path = f"/x-keys/{args.ident}" if args.ident else "/x-keys"
    query = {"level": args.level, "provider": args.provider, "page": args.page, "size": args.size}
    answer, headers = client.call("GET", path, query=query)
    if isinstance(answer, dict):
        return answer, lambda: print(pairs_table(answer))
    return answer, lambda: _print_list(answer, headers, KEY_COLUMNS)


def keys_update(client: Client, args) -> Any:
    body = parse_pairs(args.set)
    if not body:
        raise UsageError("nothing to update: give --set Field=value")
    answer, _ = client.call("PUT", f"/x-keys/{args.id}", body)
    return answer, lambda: _print_key(answer, "updated")


def keys_delete(client: Client, args) -> Any:
    answer, _ = client.call("DELETE", f"/x-keys/{args.id}")
    return answer, lambda: _print_key(answer, "deleted")


def _print_key(answer: dict, verb: str) -> None:
    key = answer.get("Key") or {}
    print(f"{verb} key {key.get('ID', '?')}")
    if len(key) > 1:
        print(pairs_table(key))
    if answer.get("LevelMapper"):
        print(f"LEVEL_MAPPER is now {cell(answer['LevelMapper'])}")


def config_get(client: Client, args) -> Any:
    answer, _ = client.call("GET", "/x-config")
    configs = (answer or {}).get("configs", {})
    if args.name:
        if args.name not in configs:
            raise UsageError(f"no config key {args.name!r}; known: {', '.join(sorted(configs))}")
        value = configs[args.name]
        return value, lambda: print(value if isinstance(value, str) else json.dumps(value))
    return answer, lambda: _print_config(answer)


def config_set(client: Client, args) -> Any:
    body = parse_pairs(args.pairs, "config set")
    answer, _ = client.call("PUT", "/x-config", body)
    return answer, lambda: _print_config(answer)


def _print_config(answer: dict) -> None:
    print(f"config version {answer.get('version', '?')}")
    rows = [{"Key": k, "Value": v} for k, v in sorted((answer.get("configs") or {}).items())]
    if rows:
        print(table(rows, ["Key", "Value"]))


def bill(client: Client, args) -> Any:
    query = {
        "user": args.user,
        "date": args.date,
        "start": args.start,
        "end": args.end,
        "days": args.days,
    }
    answer, _ = client.call("GET", "/x-bill", query=query)
    return answer, lambda: _print_bill(answer)


def _print_bill(answer: dict) -> None:
    rows = []
    for day in answer.get("data") or ():
        for model, use in sorted((day.get("usage_details") or {}).items()):
            rows.append({"Day": _day(day), "Model": model, **_usage_cells(use)})
    print(
        table(rows, ["Day", "Model", "Requests", "Prompt", "Completion", "Cost"])
        if rows
        else "(no usage)"
    )
    total = answer.get("total_usage") or {}
    print(f"total: {cell(total.get('requests', 0))} requests, cost {cell(total.get('cost', 0))}")
    users = answer.get("usage_users") or []
    if users:
        print()
        print(table([_user_cells(u) for u in users], ["ID", "Name", "Requests", "Cost", "Cost%"]))


def _day(day: dict) -> str:
    from datetime import UTC, datetime

    ts = day.get("aggregation_timestamp")
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d") if ts else str(day.get("date", ""))


def _usage_cells(use: dict) -> dict:
    return {
        "Requests": use.get("requests"),
        "Prompt": use.get("prompt"),
        "Completion": use.get("completion"),
        "Cost": use.get("cost"),
    }


def _user_cells(user: dict) -> dict:
    analysis = user.get("usage_analysis") or {}
    return {
        "ID": user.get("id"),
        "Name": user.get("name"),
        "Requests": user.get("total_requests"),
        "Cost": user.get("total_cost"),
        "Cost%": analysis.get("cost_percentage"),
    }


# -- wiring ---------------------------------------------------------------------------
def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"gateway address (XAI_URL, default {DEFAULT_URL})")
    common.add_argument("--key", help="your API key (XAI_KEY; prefer the variable)")
    common.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    return common


def _leaf(sub, name: str, fn: Callable, help_text: str, common) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
    p.set_defaults(func=run, action=fn)
    return p


def _paging_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--page", type=int, help="page number (default 1)")
    p.add_argument("--size", type=int, help="page size")


def _users(sub, common) -> None:
    users = sub.add_parser("users", help="manage subaccounts (/x-users)")
    cmds = users.add_subparsers(dest="action_name", required=True, metavar="COMMAND")
    p = _leaf(cmds, "add", users_add, "create a subaccount; prints its key once", common)
    p.add_argument("name", help="4-63 chars: letters, digits, - _ .")
    p.add_argument("email")
    p.add_argument("--credit", type=float, required=True, help="CreditGranted (initial funding)")
    p.add_argument("--days", type=float, help="days the credit lasts (default 365)")
    p.add_argument("--set", action="append", metavar="Field=value", help="any other field")
    p.add_argument("--idempotency-key", help="replay-safe: the same key applies once")
    p = _leaf(cmds, "list", users_list, "list direct subaccounts (--all: every descendant)", common)
    p.add_argument("--all", action="store_true", help="every descendant (/x-dna)")
    for name in ("name", "email", "level", "dna"):
        p.add_argument(f"--{name}", help=f"filter by {name}")
    _paging_args(p)
    p = _leaf(cmds, "show", users_show, "one account by ID, name or email (or L2, G1...)", common)
    p.add_argument("ident")
    p = _leaf(cmds, "update", users_update, "change fields, recharge or refund", common)
    p.add_argument("ident")
    p.add_argument("--set", action="append", metavar="Field=value", help="e.g. --set RPM=60")
    p.add_argument("--credit", type=float, help="recharge (negative: refund)")
    p.add_argument("--days", type=float, help="days a recharge lasts")
    p.add_argument("--idempotency-key", help="replay-safe: the same key applies once")
    p = _leaf(cmds, "delete", users_delete, "delete an account; its balance goes back up", common)
    p.add_argument("ident")


def _keys(sub, common) -> None:
    keys = sub.add_parser("keys", help="manage provider keys (/x-keys, owners only)")
    cmds = keys.add_subparsers(dest="action_name", required=True, metavar="COMMAND")
    p = _leaf(cmds, "add", keys_add, "add a provider key", common)
    p.add_argument("--secret", required=True, help="the provider's key; '-' reads it from stdin")
    p.add_argument("--level", type=int, required=True)
    p.add_argument("--provider", required=True, help="base URL, e.g. https://api.openai.com")
    p.add_argument("--name")
    p.add_argument("--disabled", action="store_true", help="add it switched off")
    p = _leaf(cmds, "list", keys_list, "list keys (or one: ID, L<n>, or a host)", common)
    p.add_argument("ident", nargs="?")
    p.add_argument("--level")
    p.add_argument("--provider")
    _paging_args(p)
    p = _leaf(cmds, "update", keys_update, "change a key", common)
    p.add_argument("id")
    p.add_argument("--set", action="append", metavar="Field=value", help="e.g. --set Status=false")
    p = _leaf(cmds, "delete", keys_delete, "delete a key", common)
    p.add_argument("id")


def _config(sub, common) -> None:
    config = sub.add_parser("config", help="the owner's config (/x-config)")
    cmds = config.add_subparsers(dest="action_name", required=True, metavar="COMMAND")
    p = _leaf(cmds, "get", config_get, "show the config, or one key of it", common)
    p.add_argument("name", nargs="?", help="one key, e.g. MODEL_MAPPER")
    p = _leaf(cmds, "set", config_set, "set keys, all or nothing: KEY=value ...", common)
    p.add_argument("pairs", nargs="+", metavar="KEY=value")


def add_commands(sub) -> None:
    """Register users, keys, config and bill on the `xaiproxy` subparsers."""
    common = _common()
    _users(sub, common)
    _keys(sub, common)
    _config(sub, common)
    p = _leaf(sub, "bill", bill, "usage report (/x-bill); default: this month", common)
    p.add_argument("--user", help="ID, name, email or a filter like L2")
    p.add_argument("--date", help="one day, YYYY-MM-DD")
    p.add_argument("--start", help="first day, YYYY-MM-DD")
    p.add_argument("--end", help="last day, YYYY-MM-DD")
    p.add_argument("--days", help="the last N days")


def client_for(args, env=None) -> Client:
    env = os.environ if env is None else env
    key = args.key or env.get("XAI_KEY", "")
    if not key:
        raise UsageError("no API key: set XAI_KEY (or pass --key)")
    return Client(args.url or env.get("XAI_URL") or DEFAULT_URL, key)


def run(args) -> int:
    """Run one admin command; the exit code says how it went."""
    try:
        answer, show = args.action(client_for(args), args)
    except UsageError as exc:
        print(f"xaiproxy: {exc}", file=sys.stderr)
        return 2
    except Failure as exc:
        print(f"xaiproxy: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        show()
    return 0
