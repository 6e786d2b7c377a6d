"""The start banner says whether the C speedups are loaded, and warns when one is not."""

from __future__ import annotations

import subprocess
import sys

import uvloop

from xaiproxy import speedups


def test_all_speedups_loaded_here():
    found = speedups.check(uvloop.new_event_loop())
    assert found == dict.fromkeys(found, True) and len(found) == 5
    assert speedups.banner_line(found).endswith("(all loaded)")


def test_pure_python_aiohttp_is_reported(caplog):
    code = (
        "import asyncio, uvloop; from xaiproxy import speedups;"
        "print(speedups.banner_line(speedups.check(asyncio.new_event_loop())))"
    )
    env = {"AIOHTTP_NO_EXTENSIONS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "NOT loaded: aiohttp C parser, aiohttp C writer, uvloop" in out.stdout
    assert "C speedups NOT loaded" in out.stderr
