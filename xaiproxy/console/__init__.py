"""GET /console/: the web console, served from the installed package.

The files under `static/` are read once at start (importlib.resources, so a wheel
serves them as well as a checkout) and answered from memory with an ETag. Every
console answer, errors and redirects included, carries a strict
Content-Security-Policy: scripts and styles only from this origin, no inline code,
no framing. The console itself holds no logic of the gateway's: it calls the
management API like any other client (see static/js/api.js).
"""

from __future__ import annotations

import hashlib
import mimetypes
from importlib import resources

from aiohttp import web

from ..errors import ApiError

PREFIX = "/console/"
CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
# Vendored files sit under a versioned folder, so their URL changes when they do.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"  # the console's own files: always revalidated (ETag -> 304)


class Asset:
    __slots__ = ("body", "content_type", "etag", "cache")

    def __init__(self, path: str, body: bytes) -> None:
        self.body = body
        suffix = path[path.rfind(".") :] if "." in path else ""
        self.content_type = TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "text/plain"
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        self.cache = IMMUTABLE if path.startswith("vendor/") else REVALIDATE


def load(root=None) -> dict[str, Asset]:
    """Every file under static/, keyed by its path relative to it ('js/app.js')."""
    root = root or resources.files(__name__).joinpath("static")
    found: dict[str, Asset] = {}
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                stack.append((entry, name + "/"))
            elif not entry.name.startswith("."):
                found[name] = Asset(name, entry.read_bytes())
    return found


def _answer(request: web.Request, asset: Asset) -> web.Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": asset.cache, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


def setup(app: web.Application) -> None:
    """Register /console (redirect), /console/ (the page) and /console/{path} (its files)."""
    assets = load()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(PREFIX, headers=SECURITY_HEADERS)

    async def serve(request: web.Request) -> web.Response:
        path = request.match_info.get("path") or "index.html"
        asset = assets.get(path)
        if asset is None:
            raise ApiError(
                404, "not_found", f"no console file at {PREFIX}{path[:100]}", SECURITY_HEADERS
            )
        return _answer(request, asset)

    app.router.add_get("/console", redirect)
    app.router.add_get(PREFIX, serve)
    app.router.add_get(PREFIX + "{path:.+}", serve)
