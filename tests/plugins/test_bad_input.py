"""Bad input against every endpoint of the users and rotation plugins.

Each request must be answered 400 or 404 in the error format, never 500, and must
change nothing: the accounts, grants, transfers and idempotency tables, the op log
count and the in-memory accounts are compared before and after.
"""

from datetime import UTC, datetime

import orjson
import pytest

from tests.plugins.test_users import new_user
from xaiproxy import ledger

BASE = {"Name": "fresh-name", "Email": "fresh@example.com", "CreditGranted": 10}
RAW_BODIES = [
    b"",
    b"{",
    b"[]",
    b'"text"',
    b"null",
    b"123",
    b"\xff\xfe\x00",
    b'{"Name": "fresh-name",}',
    b"[" * 2000 + b"]" * 2000,
]
RAW_NUMBERS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e309",
    "-1e309",
    "1e400",
    "123456789012345678901234567890",
    "-123456789012345678901234567890",
    "1e-400x",
    "0x10",
    '"10"',
    "true",
    "null",
    "[10]",
    "{}",
]
FIELD_VALUES = {
    "Name": [
        123,
        None,
        [],
        {},
        "a" * 10000,
        "名前名前名前",
        "na\x00me",
        "../../x",
        "1 OR 1=1",
        "abc",
    ],
    "Email": ["x" * 300 + "@example.com", "a@b@c.com", "<script>@x.com", "a@b", 5, "é@é.com"],
    "Alias": ["x" * 200, "a\nb", 5],
    "BillingEmail": ["x", 5, "a@@b.com"],
    "Rates": [-1, 0, 1e300, "1", True, 0.5],
    "Factor": [0, -2, 1e6],
    "HardLimit": [-1, 1e13, "5"],
    "SoftLimit": [-1, 1e13],
    "RPM": [1.5, -1, 1e13, "60"],
    "TPD": [-5, 2**63],
    "AllowIPs": [5, ["10.0.0.1", 5], "300.1.1.1", "10.0.0.0/99", "x" * 9000, ["1.1.1.1"] * 600],
    "AllowModels": ["a\x01b", ["x" * 300], {"a": 1}],
    "Resources": ["no-slash", "/v1/../x", "/v1/%00", "/v1/ spaced"],
    "ModelLimits": [[], 5, {"m": 5}, {"m": {"rpm": "x"}}, {"m": {"rpm": 1e13}}, "{bad json"],
    "ChildLimit": [-1, 10**7, 2.5],
    "Gear": ["1", 1.5, -1],
    "Status": ["true", 1, None],
    "Owner": ["yes", 0],
    "Days": [-1, 400, "30"],
    "SecretKey": ["sk-Xvs" + "a" * 45],
    "ID": [5],
    "Balance": [100],
    "Unknown": [1],
}
BAD_IDENTS = [
    "..",
    "%2e%2e",
    "%2e%2e%2f1",
    "1%20OR%201=1",
    "1' OR '1'='1",
    "%00",
    "x" * 5000,
    "9" * 40,
    "-1",
    "0",
    "1.0",
    "%F0%9F%98%80",
    "%C3%A9",
    "L2",
    "G%00",
]
BAD_QUERIES = [
    {"page": "0"},
    {"page": "-1"},
    {"page": "abc"},
    {"page": "9" * 20},
    {"size": "0"},
    {"size": "100000"},
    {"size": "1e3"},
    {"level": "abc"},
    {"level": "-1"},
    {"id": "x" * 100},
    {"name": "x" * 1000},
    {"dna": "x" * 5000},
    {"unknown": "1"},
]


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


async def snapshot(api) -> dict:
    store = api.gw.store
    await store.flush()
    snap = {}
    for table in ("accounts", "grants", "transfers", "idempotency"):
        snap[table] = [tuple(r) for r in await store.fetchall(f"SELECT * FROM {table} ORDER BY 1")]
    snap["op_logs"] = await store.scalar("SELECT COUNT(*) FROM op_logs")
    snap["memory"] = sorted(
        (a.id, tuple(sorted(a.row().items())), ledger.balance_n(a), a.dna)
        for a in api.gw.state.accounts.values()
    )
    return snap


@pytest.fixture
async def world(api):
    """alpha (a child of root, funded) and beta (alpha's child)."""
    a, akey = await new_user(api, "alpha-acc", 100)
    b, bkey = await new_user(api, "beta-acc", 30, key=akey)
    return {"a": a, "akey": akey, "b": b, "bkey": bkey}


async def refused(api, method, path, raw=None, key=None, headers=None, params=None) -> str | None:
    """None when the answer is a clean 400/404 error; otherwise what went wrong."""
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    r = await api.request(method, path, key, data=raw, headers=hdrs, params=params)
    err = r.body.get("error") if isinstance(r.body, dict) else None
    if r.status in (400, 404) and isinstance(err, dict) and set(err) == {"message", "type", "code"}:
        return None
    return f"{method} {path[:60]} {str(raw)[:80]} {params}: {r.status} {r.raw[:200]!r}"


def bodies(base: dict) -> list[bytes]:
    out = list(RAW_BODIES)
    for number in RAW_NUMBERS:
        text = orjson.dumps(base | {"CreditGranted": 0}).decode()
        out.append(text.replace('"CreditGranted":0', f'"CreditGranted":{number}').encode())
    for field, values in FIELD_VALUES.items():
        out += [orjson.dumps(base | {field: v}) for v in values]
    return out


async def run_all(api, calls) -> None:
    before = await snapshot(api)
    failures = [f for f in [await refused(api, *c[:2], **c[2]) for c in calls] if f]
    assert failures == []
    assert await snapshot(api) == before


async def test_create(api, world):
    calls = [("POST", "/x-users", {"raw": raw}) for raw in bodies(BASE)]
    calls += [("POST", "/x-users", {"raw": raw, "key": world["akey"]}) for raw in bodies(BASE)]
    extra = [
        BASE | {"CreditGranted": -5},
        BASE | {"CreditGranted": 1},
        BASE | {"CreditGranted": 0},
        BASE | {"Rates": 0.9},
    ]
    calls += [("POST", "/x-users", {"raw": orjson.dumps(b)}) for b in extra]
    await run_all(api, calls)


async def test_update(api, world):
    target = f"/x-users/{world['b']}"
    partial = {"Gear": 1}
    calls = [("PUT", target, {"raw": raw}) for raw in bodies(partial) if raw not in (b"",)]
    calls += [("PUT", target, {"raw": raw, "key": world["akey"]}) for raw in bodies(partial)]
    extra = [
        {},
        {"CreditGranted": 0},
        {"CreditGranted": -1e9},
        {"CreditGranted": -30.01},
        {"Days": 5},
        {"CreditGranted": -5, "Days": 5},
        {"Rates": 0.99},
        {"HardLimit": 5, "SoftLimit": 6},
    ]
    calls += [("PUT", target, {"raw": orjson.dumps(b)}) for b in extra]
    calls += [("PUT", f"/x-users/{i}", {"raw": b'{"Gear": 1}'}) for i in BAD_IDENTS]
    # outside the caller's subtree: parent, sibling, self, root
    for ident in (str(world["a"]), "alpha-acc", "1", "root"):
        calls.append(("PUT", f"/x-users/{ident}", {"raw": b'{"Gear": 1}', "key": world["akey"]}))
    calls.append(
        ("PUT", target, {"raw": b'{"CreditGranted": 1}', "headers": {"Idempotency-Key": "a b"}})
    )
    await run_all(api, calls)


async def test_delete(api, world):
    calls = [("DELETE", f"/x-users/{i}", {}) for i in BAD_IDENTS + ["1", "root"]]
    calls += [
        ("DELETE", f"/x-users/{i}", {"key": world["bkey"]})
        for i in (str(world["a"]), str(world["b"]), "alpha-acc", "1")
    ]
    calls.append(("DELETE", f"/x-users/{world['b']}", {"params": {"force": "1"}}))
    await run_all(api, calls)


async def test_reads(api, world):
    calls = []
    for path in ("/x-users", "/x-dna"):
        calls += [("GET", path, {"params": q}) for q in BAD_QUERIES]
        calls += [("GET", f"{path}/{i}", {}) for i in BAD_IDENTS if i != "L2"]
        calls += [("GET", f"{path}/{world['b']}", {"params": q}) for q in BAD_QUERIES]
        calls += [("GET", f"{path}/{world['a']}", {"key": world["akey"]})]
    await run_all(api, calls)


async def test_rotation(api, world):
    good = {"confirm": f"{today()}-ROTATE-SELF"}
    self_bodies = [
        b"",
        b"{",
        b'{"confirm": NaN}',
        orjson.dumps({}),
        orjson.dumps({"confirm": 5}),
        orjson.dumps({"confirm": "x" * 100}),
        orjson.dumps({"confirm": "2020-01-01-ROTATE-SELF"}),
        orjson.dumps({"confirm": f"{today()}-ROTATE-ROOT"}),
        orjson.dumps(good | {"key": "sk-Xvs" + "a" * 45}),
        orjson.dumps({"confirm": [good["confirm"]]}),
    ]
    calls = [("POST", "/x-self", {"raw": raw, "key": world["akey"]}) for raw in self_bodies]
    confirm = f"{today()}-ROTATE-ROOT"
    root_bodies = [
        {"confirm": confirm, "name": 5},
        {"confirm": confirm, "name": "x" * 300},
        {"confirm": confirm, "name": ".."},
        {"confirm": confirm, "name": "\x00"},
        {"confirm": confirm, "name": ""},
        {"confirm": confirm, "key": "sk-Xvs" + "a" * 44},
        {"confirm": confirm, "key": "sk-Xvs" + "a" * 46},
        {"confirm": confirm, "key": "sk-Xvs" + "a" * 44 + "!"},
        {"confirm": confirm, "key": 5},
        {"confirm": "2020-01-01-ROTATE-ROOT"},
        {"confirm": confirm, "extra": 1},
        {"name": "alpha-acc"},
    ]
    calls += [("POST", "/x-root", {"raw": orjson.dumps(b)}) for b in root_bodies]
    calls.append(("POST", "/x-self", {"raw": orjson.dumps(good), "params": {"x": "1"}}))
    await run_all(api, calls)


async def test_errors_never_echo_keys(api, world):
    secret = "sk-Xvs" + "q" * 44
    confirm = f"{today()}-ROTATE-ROOT"
    r = await api.post("/x-root", {"confirm": confirm, "name": "alpha-acc", "key": secret})
    assert r.status == 400 and b"qqqqqqqq" not in r.raw
    r = await api.post("/x-users", BASE | {"SecretKey": secret})
    assert r.status == 400 and b"qqqqqqqq" not in r.raw


async def test_identifiers_take_ascii_digits_and_validators_whole_matches(api, world):
    """ "²" and "٣" are digits to str.isdigit() and \\d; "$" also matches before a newline."""
    calls = []
    for ident in ("²", "٣", "1²", "L²", "F٣", "G٣.5"):
        calls += [
            ("GET", f"/x-users/{ident}", {}),
            ("GET", f"/x-dna/{ident}", {}),
            ("PUT", f"/x-users/{ident}", {"raw": orjson.dumps({"Alias": "x"})}),
            ("DELETE", f"/x-users/{ident}", {}),
            ("GET", "/x-bill", {"params": {"user": ident}}),
            ("POST", f"/x-news/{ident}", {"raw": orjson.dumps({"title": "t", "content": "c"})}),
        ]
    for ident in ("²", "٣"):
        calls += [
            ("PUT", f"/x-keys/{ident}", {"raw": orjson.dumps({"Name": "x"})}),
            ("DELETE", f"/x-keys/{ident}", {}),
        ]
    for field in ("Name", "Email"):
        calls.append(
            ("POST", "/x-users", {"raw": orjson.dumps(BASE | {field: BASE[field] + "\n"})})
        )
    root = {"confirm": f"{today()}-ROTATE-ROOT", "key": "sk-Xvs" + "a" * 45 + "\n"}
    calls.append(("POST", "/x-root", {"raw": orjson.dumps(root)}))
    await run_all(api, calls)
    for ident in ("²", "L²"):  # not an ID: a provider host, which no key has
        r = await api.get(f"/x-keys/{ident}")
        assert r.status == 200 and r.body == []
