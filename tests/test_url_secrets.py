"""Database and Redis URLs carry passwords: the banner, errors and logs show them masked."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from tests.helpers import ROOT_KEY
from tests.test_lifecycle import start
from xaiproxy import cli
from xaiproxy import settings as settings_mod
from xaiproxy.settings import SettingsError, mask_url

SECRET = "hunter2-s3cret"

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://xai:{SECRET}@db.example:5432/gw",
            "postgresql://xai:****@db.example:5432/gw",
        ),
        (f"postgresql://xai:{SECRET}@@h/gw", "postgresql://xai:****@h/gw"),  # '@' in a password
        (f"redis://:{SECRET}@127.0.0.1:6379/0", "redis://:****@127.0.0.1:6379/0"),
        (f"rediss://app:{SECRET}@r.example/1", "rediss://app:****@r.example/1"),
        (
            f"postgresql://xai@h/gw?sslmode=require&password={SECRET}",
            "postgresql://xai@h/gw?sslmode=require&password=****",
        ),
        (f"postgresql://xai:{SECRET}@h:notaport/gw", "postgresql://xai:****@h:notaport/gw"),
        (f"postgresql://xai:{SECRET}@[::1/gw", "postgresql://xai:****@[::1/gw"),  # unparseable
        ("postgresql://xai@h/gw", "postgresql://xai@h/gw"),
        ("./data/xaiproxy.db", "./data/xaiproxy.db"),
        ("", ""),
    ],
)
def test_mask_url_hides_the_password_and_keeps_the_rest(url, shown):
    assert mask_url(url) == shown
    assert SECRET not in mask_url(url)


def test_a_postgresql_db_needs_redis_and_the_refusal_hides_its_password():
    for scheme in ("postgresql", "postgres"):
        with pytest.raises(SettingsError) as err:
            settings_mod.load(env={"XAI_DB": f"{scheme}://xai:{SECRET}@h/gw"})
        message = str(err.value)
        assert SECRET not in message and "xai:****@h/gw" in message
        assert "'redis'" in message and "XAI_REDIS" in message
    redis = f"redis://:{SECRET}@r:6379/0"
    settings = settings_mod.load(
        env={"XAI_DB": f"postgresql://xai:{SECRET}@h/gw", "XAI_REDIS": redis}
    )
    assert settings.db.startswith("postgresql://") and SECRET not in repr(settings)
    with pytest.raises(SettingsError, match="not a supported database"):
        settings_mod.load(env={"XAI_DB": f"mysql://xai:{SECRET}@h/gw"})
    settings = settings_mod.load(env={"XAI_REDIS": f"redis://:{SECRET}@h:6379/0"})
    assert settings.redis.endswith("@h:6379/0") and SECRET not in repr(settings)


def test_the_banner_masks_the_redis_password():
    settings = settings_mod.Settings(redis=f"redis://:{SECRET}@r:6379/0")
    banner = cli._banner(settings, None)
    assert "redis://:****@r:6379/0" in banner and SECRET not in banner


async def test_serve_never_prints_a_password(tmp_path):
    """The real process: a refused PostgreSQL URL and a Redis URL, banner and logs."""
    env = {**os.environ, "XAI_DB": f"postgresql://xai:{SECRET}@127.0.0.1:9/gw"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "xaiproxy",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out = (await proc.stdout.read()).decode()
    assert await proc.wait() == 2
    assert "xai:****@127.0.0.1:9/gw" in out and SECRET not in out

    # With Redis set, PostgreSQL is accepted; a database that cannot be reached stops
    # the start with one line naming it, masked.
    env["XAI_REDIS"] = f"redis://:{SECRET}@127.0.0.1:9/0"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xaiproxy", "serve", "--port", "0", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    out = (await proc.stdout.read()).decode()
    assert await proc.wait() == 2, out
    assert "database postgresql://xai:****@127.0.0.1:9/gw: cannot connect" in out, out
    assert SECRET not in out and "Traceback" not in out

    proc, _ = await start(
        tmp_path / "gw.db",
        {"XAI_REDIS": f"redis://app:{SECRET}@127.0.0.1:6379/0", "XAI_ROOT_KEY": ROOT_KEY},
    )
    proc.send_signal(signal.SIGTERM)
    out = (await proc.stdout.read()).decode()
    assert await proc.wait() == 0
    assert "redis://app:****@127.0.0.1:6379/0" in out and SECRET not in out
