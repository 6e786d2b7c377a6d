"""Which C speedups are really loaded: the floor the data plane is measured at needs them all.

aiohttp silently falls back to pure-Python parsing and header writing (no compiler at
install time, or AIOHTTP_NO_EXTENSIONS set), which costs several times the CPU per request.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging

log = logging.getLogger("xaiproxy")


def check(loop: asyncio.AbstractEventLoop | None = None) -> dict[str, bool]:
    """Each speedup by name: loaded (True) or not (False)."""
    from aiohttp import http_parser, http_writer

    found = {
        "aiohttp C parser": http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser",
        "aiohttp C writer": http_writer._serialize_headers is not http_writer._py_serialize_headers,
        "orjson": importlib.util.find_spec("orjson") is not None,
        "httptools": importlib.util.find_spec("httptools") is not None,
    }
    try:
        import uvloop

        found["uvloop"] = loop is not None and isinstance(loop, uvloop.Loop)
    except ImportError:  # pragma: no cover - non-POSIX
        found["uvloop"] = False
    return found


def banner_line(found: dict[str, bool]) -> str:
    """One line for the start banner; also warns loudly in the log when any is missing."""
    missing = [name for name, ok in found.items() if not ok]
    if not missing:
        return "  speedups: " + ", ".join(found) + " (all loaded)"
    log.warning(
        "C speedups NOT loaded: %s. The gateway works but spends several times the CPU per"
        " request; reinstall with a compiler available and without AIOHTTP_NO_EXTENSIONS.",
        ", ".join(missing),
    )
    return "  WARNING: C speedups NOT loaded: " + ", ".join(missing) + " (see the log)"
