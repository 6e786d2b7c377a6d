"""The plugin interface: loading by import path, hooks declared once, routes validated by schema."""

import sys
import types
from pathlib import Path

import pytest

from xaiproxy import plugins
from xaiproxy.plugins import Hooks


@pytest.fixture
def hello_plugin():
    module = types.ModuleType("tests.fake_hello_plugin")

    def setup(gw):
        async def hello(call):
            return call.json({"hello": call.caller.name, "n": call.body["n"]})

        body = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        gw.route("POST", "/x-hello", hello, summary="hello", body=body)
        gw.route("GET", "/x-root-only", hello, root_only=True)

    module.setup = setup
    sys.modules[module.__name__] = module
    yield module.__name__
    del sys.modules[module.__name__]


async def test_third_party_plugin_by_import_path(make_gateway, hello_plugin):
    api = await make_gateway(plugins=("keys", hello_plugin))
    assert api.gw.plugins == ["keys", hello_plugin]
    r = await api.post("/x-hello", {"n": 3})
    assert r.status == 200 and r.body == {"hello": "root", "n": 3}
    r = await api.post("/x-hello", {"n": "three"})
    assert r.status == 400 and r.body["error"]["message"] == "n: must be of type integer"
    r = await api.post("/x-hello", {})
    assert r.status == 400 and "required" in r.body["error"]["message"]


async def test_plugin_without_setup_is_refused(make_gateway):
    sys.modules["tests.fake_empty_plugin"] = types.ModuleType("tests.fake_empty_plugin")
    try:
        with pytest.raises(RuntimeError, match="no setup"):
            await make_gateway(plugins=("tests.fake_empty_plugin",))
    finally:
        del sys.modules["tests.fake_empty_plugin"]


def test_every_hook_is_documented():
    doc = (Path(plugins.__file__).parent.parent / "plugins" / "README.md").read_text()
    for name in Hooks.__dataclass_fields__:
        assert f"gw.hooks.{name}" in doc, f"hook {name} has no docs in plugins/README.md"


def test_hooks_start_empty():
    hooks = Hooks()
    assert all(getattr(hooks, name) == [] for name in Hooks.__dataclass_fields__)


async def test_plugin_from_an_installed_entry_point(make_gateway, tmp_path, monkeypatch):
    """A distribution declaring `[xaiproxy.plugins] hello = ...` is loaded by that name."""
    (tmp_path / "xai_hello_pkg.py").write_text(
        "def setup(gw):\n"
        "    async def hello(call):\n"
        "        return call.json({'from': 'entry point', 'caller': call.caller.id})\n"
        "    gw.route('GET', '/x-hello-ep', hello, summary='hello')\n"
    )
    dist = tmp_path / "xai_hello_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xai-hello-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[xaiproxy.plugins]\nhello-ep = xai_hello_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    api = await make_gateway(plugins=("keys", "hello-ep"))
    assert api.gw.plugins == ["keys", "hello-ep"]
    r = await api.get("/x-hello-ep")
    assert r.status == 200 and r.body == {"from": "entry point", "caller": 1}
