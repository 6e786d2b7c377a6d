"""The admin CLI, run as a real subprocess against a real gateway on a real port."""

from __future__ import annotations

import asyncio
import json
import os
import sys

PROVIDER_SECRET = "sk-provider-" + "s3cr3t" * 5


async def cli(api, *args: str, key: str | None = None, url: str | None = None, stdin: bytes = b""):
    """Run `python -m xaiproxy ARGS` with XAI_URL/XAI_KEY set; (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XAI_")}
    env["XAI_URL"] = api.url if url is None else url
    if key != "":
        env["XAI_KEY"] = key or api.root
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "xaiproxy",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    return proc.returncode, out.decode(), err.decode()


async def test_users_lifecycle_with_tables_and_json(api):
    rc, out, err = await cli(
        api, "users", "add", "alice-team", "alice@example.com", "--credit", "40", "--set", "RPM=60"
    )
    assert rc == 0, err
    assert "created user" in out and "shown once" in out
    secret = next(line.split()[1] for line in out.splitlines() if line.startswith("SecretKey:"))
    assert api.gw.state.find("alice-team").rpm == 60
    reply = await api.get("/dashboard/x-user-status", key=secret)
    assert reply.status == 200 and reply.body["name"] == "alice-team"

    rc, out, _ = await cli(api, "users", "list")
    header, row = out.splitlines()[:2]
    assert header.split() == [
        "ID",
        "Name",
        "Email",
        "Level",
        "Status",
        "Balance",
        "Rates",
        "PartialKey",
    ]
    assert header.index("Email") == row.index("alice@example.com")  # aligned columns
    assert "1 in all" in out and secret not in out

    rc, out, _ = await cli(
        api, "users", "update", "alice-team", "--set", "Alias=Alice A", "--set", "TPM=1000"
    )
    assert rc == 0 and "updated user" in out
    rc, out, _ = await cli(api, "users", "show", "alice-team", "--json")
    shown = json.loads(out)
    assert (shown["Alias"], shown["TPM"], shown["RPM"]) == ("Alice A", 1000, 60)

    rc, out, _ = await cli(api, "users", "delete", "alice-team")
    assert rc == 0 and "deleted user" in out
    assert (await api.get("/x-users/alice-team")).status == 404


async def test_keys_secret_from_stdin_is_shown_masked_only(api):
    rc, out, err = await cli(
        api,
        "keys", "add", "--secret", "-", "--level", "2", "--provider", "https://api.anthropic.com",
        "--name", "claude",
        stdin=PROVIDER_SECRET.encode() + b"\n",
    )  # fmt: skip
    assert rc == 0, err
    assert PROVIDER_SECRET not in out
    [key] = api.gw.state.keys.values()
    assert key.secret == PROVIDER_SECRET and key.level == 2

    rc, out, _ = await cli(api, "keys", "list", "--json")
    assert [k["Name"] for k in json.loads(out)] == ["claude"] and PROVIDER_SECRET not in out
    rc, out, _ = await cli(
        api, "keys", "update", str(key.id), "--set", "Status=false", "--set", "Level=3"
    )
    assert rc == 0 and (key.status, key.level) == (False, 3)
    rc, out, _ = await cli(api, "keys", "list", "L3")
    assert "claude" in out and "false" in out
    rc, out, _ = await cli(api, "keys", "delete", str(key.id))
    assert rc == 0 and not api.gw.state.keys


async def test_config_set_parses_json_values_and_get_reads_them(api):
    rc, out, err = await cli(
        api, "config", "set", "USER_MIN_BALANCE=5", 'MODEL_MAPPER={"gpt-4": "gpt-4o"}'
    )
    assert rc == 0, err
    cfg = api.gw.config(1)
    assert cfg.number("USER_MIN_BALANCE") == 5
    rc, out, _ = await cli(api, "config", "get", "USER_MIN_BALANCE")
    assert float(out) == 5
    rc, out, _ = await cli(api, "config", "get", "--json")
    assert "MODEL_MAPPER" in json.loads(out)["configs"]
    rc, _, err = await cli(api, "config", "set", "NOT_A_KEY=1")
    assert rc == 1 and "400" in err and api.gw.config(1).version == cfg.version


async def test_bill_prints_totals_and_json(api):
    rc, out, err = await cli(api, "bill")
    assert rc == 0, err
    assert "total: 0 requests" in out
    rc, out, _ = await cli(api, "bill", "--days", "7", "--json")
    assert json.loads(out)["total_usage"]["requests"] == 0


async def test_errors_have_messages_and_exit_codes(api):
    rc, out, err = await cli(api, "users", "show", "nobody-here")
    assert (rc, out) == (1, "") and "404" in err and "not found" in err
    rc, _, err = await cli(api, "users", "list", key="")
    assert rc == 2 and "XAI_KEY" in err
    rc, _, err = await cli(api, "users", "list", key="sk-Xvs" + "x" * 45)
    assert rc == 1 and "401" in err and "x" * 45 not in err
    rc, _, err = await cli(api, "users", "update", "root", "--set", "novalue")
    assert rc == 2 and "Field=value" in err
    rc, _, err = await cli(api, "users", "add", "only-a-name")
    assert rc == 2 and "usage:" in err
    rc, _, err = await cli(api, "users", "list", url="http://127.0.0.1:9")
    assert rc == 1 and "cannot reach the gateway" in err


async def test_flags_beat_the_environment(api):
    rc, out, err = await cli(
        api,
        "users",
        "list",
        "--url",
        api.url,
        "--key",
        api.root,
        url="http://127.0.0.1:9",
        key="bad",
    )
    assert rc == 0, err
    assert "(none)" in out
