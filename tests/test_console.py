"""Serving /console/: files from the package, content types, caching, CSP on every answer.

The console's pages are tested in a real browser in test_console_browser.py; these
tests check what the server answers and what the shipped files may not contain.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest

from xaiproxy import console

STATIC = resources.files("xaiproxy.console").joinpath("static")


def _files() -> dict[str, str]:
    return {
        name: asset.body.decode()
        for name, asset in console.load().items()
        if name.endswith((".html", ".js", ".css")) and not name.startswith("vendor/")
    }


def _secure(headers) -> None:
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/console/", "text/html"),
        ("/console/console.css", "text/css"),
        ("/console/js/api.js", "text/javascript"),
        ("/console/vendor/uplot-1.6.32/uPlot.esm.js", "text/javascript"),
    ],
)
async def test_files_are_served_with_their_type_and_the_csp(api, path, content_type):
    r = await api.get(path, key="")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith(content_type)
    _secure(r.headers)
    assert r.raw == console.load()[path.removeprefix("/console/") or "index.html"].body


async def test_own_files_revalidate_vendored_ones_are_immutable(api):
    page = await api.get("/console/js/app.js", key="")
    assert page.headers["Cache-Control"] == "no-cache"
    again = await api.get(
        "/console/js/app.js", key="", headers={"If-None-Match": page.headers["ETag"]}
    )
    assert again.status == 304 and again.raw == b""
    _secure(again.headers)
    vendored = await api.get("/console/vendor/uplot-1.6.32/uPlot.min.css", key="")
    assert "immutable" in vendored.headers["Cache-Control"]


async def test_unknown_files_are_404_in_the_error_format(api):
    for path in ("/console/nope.js", "/console/__init__.py", "/console/js/"):
        r = await api.get(path, key="")
        assert r.status == 404, path
        assert r.body["error"]["code"] == "not_found"
        _secure(r.headers)


async def test_console_redirects_to_the_slash(api):
    async with api.session.get(api.url + "/console", allow_redirects=False) as resp:
        assert resp.status == 301 and resp.headers["Location"] == "/console/"
        _secure(resp.headers)


def test_every_file_the_page_names_is_shipped():
    files = console.load()
    html = files["index.html"].body.decode()
    for ref in re.findall(r'(?:src|href)="([^":]+)"', html):
        assert ref in files, ref
    for name, text in _files().items():
        if not name.endswith(".js"):
            continue
        folder = name.rsplit("/", 1)[0]
        for ref in re.findall(r"from '(\.[^']+)'", text):
            parts = f"{folder}/{ref}".split("/")
            resolved: list[str] = []
            for part in parts:
                if part == "..":
                    resolved.pop()
                elif part != ".":
                    resolved.append(part)
            assert "/".join(resolved) in files, (name, ref)
    assert (STATIC / "vendor" / "uplot-1.6.32" / "LICENSE").is_file()


def test_no_inline_code_or_html_from_strings():
    """The CSP forbids inline script and style; data reaches the page only as text."""
    for name, text in _files().items():
        assert "innerHTML" not in text.replace("'innerHTML'", ""), name
        assert "insertAdjacentHTML" not in text and "document.write" not in text, name
        assert ".style." not in text and "setAttribute('style'" not in text, name
        assert not re.search(r"\son[a-z]+=", text) or name.endswith(".js"), name
        assert "localStorage" not in text and "document.cookie" not in text, name
    html = _files()["index.html"]
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "<style" not in html and "style=" not in html


def test_api_calls_live_in_one_module():
    for name, text in _files().items():
        if name != "js/api.js":
            assert "fetch(" not in text, name
            assert not re.search(r"['\"]/(x-|dashboard/)", text), name
