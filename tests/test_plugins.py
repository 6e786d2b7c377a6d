"""The plugin interface: loading and its errors, hooks that cannot break a stream, query
coercion, options, migrations, and the documented names."""

import logging
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest
from aiohttp import web

from tests.fakes import add_user, chat, ready
from xaiproxy import hooks as hooks_mod
from xaiproxy import ledger, plugins
from xaiproxy import settings as settings_mod
from xaiproxy.app import GATEWAY, create_app
from xaiproxy.context import RequestContext
from xaiproxy.errors import StartError
from xaiproxy.hooks import Hooks, HooksFrozen
from xaiproxy.plugins import Option
from xaiproxy.store import ops as o
from xaiproxy.store.ops import AddColumn, Column, Table
from xaiproxy.testing import start_gateway as kit_start

pytest_plugins = ["tests.fakes_fixtures"]
ROOT = Path(plugins.__file__).parent.parent
README = (ROOT / "plugins" / "README.md").read_text()
CHAT = "/v1/chat/completions"


@pytest.fixture
def module_plugin():
    """Register fake plugin modules: `module_plugin("tests.fake_x", setup)` -> its name."""
    added = []

    def make(name: str, setup=None) -> str:
        module = types.ModuleType(name)
        if setup is not None:
            module.setup = setup
        sys.modules[name] = module
        added.append(name)
        return name

    yield make
    for name in added:
        del sys.modules[name]


@pytest.fixture
def hello_plugin(module_plugin):
    def setup(gw):
        async def hello(call):
            return call.json({"hello": call.caller.name, "n": call.body["n"]})

        body = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        gw.route("POST", "/x-hello", hello, summary="hello", body=body)
        gw.route("GET", "/x-root-only", hello, root_only=True)

    return module_plugin("tests.fake_hello_plugin", setup)


def entry_point_dist(tmp_path, monkeypatch, module: str, source: str, name: str) -> None:
    """An installed distribution declaring `[xaiproxy.plugins] name = module`."""
    (tmp_path / f"{module}.py").write_text(source)
    dist = tmp_path / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[xaiproxy.plugins]\n{name} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


# -- loading ------------------------------------------------------------------------
async def test_third_party_plugin_by_import_path(make_gateway, hello_plugin):
    api = await make_gateway(plugins=("keys", hello_plugin))
    assert api.gw.plugins == ["keys", hello_plugin]
    r = await api.post("/x-hello", {"n": 3})
    assert r.status == 200 and r.body == {"hello": "root", "n": 3}
    r = await api.post("/x-hello", {"n": "three"})
    assert r.status == 400 and r.body["error"]["message"] == "n: must be of type integer"
    r = await api.post("/x-hello", {})
    assert r.status == 400 and "required" in r.body["error"]["message"]


async def test_extra_plugins_add_to_the_builtins(make_gateway, hello_plugin):
    api = await make_gateway(extra_plugins=(hello_plugin, "keys"))
    assert api.gw.plugins == [*settings_mod.Settings().plugins, hello_plugin]
    assert (await api.get("/x-users")).status == 200
    assert (await api.post("/x-hello", {"n": 1})).status == 200


def test_extra_plugins_from_the_environment():
    s = settings_mod.load(env={"XAI_EXTRA_PLUGINS": "mypkg.a, b"})
    assert s.extra_plugins == ("mypkg.a", "b") and s.plugins == settings_mod.Settings().plugins
    assert plugins.names_to_load(s) == [*s.plugins, "mypkg.a", "b"]


async def test_plugin_without_setup_is_refused(make_gateway, module_plugin):
    name = module_plugin("tests.fake_empty_plugin")
    with pytest.raises(StartError, match="no setup"):
        await make_gateway(plugins=(name,))


async def test_unknown_plugin_is_one_clear_error(make_gateway):
    with pytest.raises(StartError, match=r"^unknown plugin 'nosuch': not a built-in \(alerts"):
        await make_gateway(plugins=("keys", "nosuch"))
    with pytest.raises(StartError, match="^unknown plugin 'nopkg.mod': no module named"):
        await make_gateway(plugins=("nopkg.mod",))


def test_serve_prints_one_line_for_an_unknown_plugin(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "XAI_EXTRA_PLUGINS": "nosuch", "XAI_DB": str(tmp_path / "x.db")}
    done = subprocess.run(
        [sys.executable, "-m", "xaiproxy", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xaiproxy: unknown plugin 'nosuch'"), lines


async def test_two_plugins_on_one_route_name_both(make_gateway, module_plugin):
    async def h(call):
        return call.json({})

    name = module_plugin("tests.fake_users_clash", lambda gw: gw.route("get", "/x-users/{id}", h))
    with pytest.raises(
        StartError,
        match=r"^route GET /x-users/\{id\} is claimed by two plugins: 'users' and 'tests.fake_users_clash'$",
    ):
        await make_gateway(extra_plugins=(name,))
    core = module_plugin("tests.fake_v1", lambda gw: gw.route("GET", "/v1/mine", h))
    with pytest.raises(StartError, match="a path the core serves"):
        await make_gateway(plugins=(core,))


async def test_a_builtin_name_and_an_entry_point_of_it_are_ambiguous(
    make_gateway, tmp_path, monkeypatch
):
    source = "def setup(gw):\n    pass\n"
    entry_point_dist(tmp_path, monkeypatch, "xai_my_billing", source, "billing")
    with pytest.raises(StartError, match="'billing' is ambiguous: the built-in xaiproxy_plugins"):
        await make_gateway()
    # Named by import path, each is found.
    api = await make_gateway(
        plugins=("keys", "users", "xaiproxy_plugins.billing", "xai_my_billing")
    )
    assert (await api.get("/x-bill")).status == 200


async def test_a_builtin_chosen_over_a_module_of_its_name_is_a_warning(
    make_gateway, tmp_path, monkeypatch, caplog
):
    (tmp_path / "news.py").write_text("def setup(gw):\n    raise AssertionError('not me')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="xaiproxy.plugins"):
        api = await make_gateway(plugins=("news",))
    assert (await api.get("/dashboard/x-user-news")).status == 200
    assert "plugin 'news' is the built-in xaiproxy_plugins.news" in caplog.text


async def test_plugin_from_an_installed_entry_point(make_gateway, tmp_path, monkeypatch):
    """A distribution declaring `[xaiproxy.plugins] hello = ...` is loaded by that name."""
    source = (
        "def setup(gw):\n"
        "    async def hello(call):\n"
        "        return call.json({'from': 'entry point', 'caller': call.caller.id})\n"
        "    gw.route('GET', '/x-hello-ep', hello, summary='hello')\n"
    )
    entry_point_dist(tmp_path, monkeypatch, "xai_hello_pkg", source, "hello-ep")
    api = await make_gateway(plugins=("keys", "hello-ep"))
    assert api.gw.plugins == ["keys", "hello-ep"]
    r = await api.get("/x-hello-ep")
    assert r.status == 200 and r.body == {"from": "entry point", "caller": 1}


# -- hooks ----------------------------------------------------------------------------
def test_every_hook_is_declared_once_with_its_rules_and_documented():
    assert list(hooks_mod.DECLARED) == ["before_upstream", "on_usage", "on_request_end"]
    hooks = Hooks()
    for name, decl in hooks_mod.DECLARED.items():
        doc = decl.__doc__
        assert "Fires:" in doc and "May:" in doc and "Return rule:" in doc, name
        assert getattr(hooks, name).doc == doc and not getattr(hooks, name)
        assert f"gw.hooks.{name}" in README, f"hook {name} has no docs in plugins/README.md"


async def test_hooks_are_frozen_once_the_gateway_runs(api):
    with pytest.raises(HooksFrozen, match="gw.hooks.on_usage is frozen: the gateway has started"):
        api.gw.hooks.on_usage.append(lambda ctx: None)
    assert not hasattr(api.gw.hooks.on_usage, "remove")


async def test_a_hook_of_the_wrong_kind_is_refused_at_start(make_gateway):
    async def late(ctx):
        pass

    with pytest.raises(StartError, match="gw.hooks.on_usage takes a plain"):
        await make_gateway(setup=[lambda gw: gw.hooks.on_usage.append(late)])
    with pytest.raises(StartError, match="gw.hooks.before_upstream takes an async"):
        await make_gateway(setup=[lambda gw: gw.hooks.before_upstream.append(print)])


async def test_raising_hooks_never_break_a_stream_billing_or_the_next_hook(
    make_gateway, upstream, module_plugin, caplog
):
    seen = {"usage": [], "end": [], "before": []}

    def broken(ctx):
        raise RuntimeError("plugin bug")

    async def broken_before(ctx):
        raise KeyError("plugin bug")

    def setup(gw):
        gw.hooks.before_upstream.append(broken_before)
        gw.hooks.on_usage.append(broken)
        gw.hooks.on_request_end.append(broken)

    def after(gw):
        gw.hooks.before_upstream.append(_record_async(seen["before"]))
        gw.hooks.on_usage.append(seen["usage"].append)
        gw.hooks.on_request_end.append(seen["end"].append)

    bad = module_plugin("tests.fake_bad_hooks", setup)
    api = await ready(make_gateway, upstream, extra_plugins=(bad,), setup=[after])
    uid, key = await add_user(api, credit=10)
    acc = api.gw.state.accounts[uid]
    before = ledger.balance(acc)
    with caplog.at_level(logging.ERROR, logger="xaiproxy.hooks"):
        for _ in range(2):
            r = await api.post(CHAT, chat(stream=True), key=key)
            assert r.status == 200
            assert r.raw.rstrip().endswith(b"data: [DONE]") and r.raw.count(b"tok") == 3
    assert len(seen["before"]) == len(seen["usage"]) == len(seen["end"]) == 2
    assert ledger.balance(acc) < before
    await api.gw.store.flush()
    assert (await api.gw.usage.total(acc)).requests == 2
    assert "hook on_usage broken of plugin 'tests.fake_bad_hooks' raised; skipped" in caplog.text
    assert "RuntimeError: plugin bug" in caplog.text
    assert "hook before_upstream" in caplog.text and "hook on_request_end" in caplog.text
    # The second failure of each hook is counted, not logged again at once.
    assert caplog.text.count("hook on_usage broken") == 1


def _record_async(into: list):
    async def record(ctx):
        into.append(ctx)

    return record


# -- query parameters -------------------------------------------------------------
async def test_query_values_are_coerced_to_their_schema(make_gateway, module_plugin):
    query = {
        "type": "object",
        "properties": {
            "limit": {"type": "integer", "minimum": 1, "maximum": 50},
            "ratio": {"type": "number"},
            "full": {"type": "boolean"},
            "ids": {"type": "array", "items": {"type": "integer"}},
            "name": {"type": "string"},
        },
        "additionalProperties": False,
    }

    async def echo(call):
        return call.json(call.query)

    name = module_plugin("tests.fake_query", lambda gw: gw.route("GET", "/x-q", echo, query=query))
    api = await make_gateway(plugins=(name,))
    r = await api.get("/x-q?limit=1&ratio=0.5&full=true&ids=3&ids=4&name=7")
    assert r.status == 200 and r.body == {
        "limit": 1,
        "ratio": 0.5,
        "full": True,
        "ids": [3, 4],
        "name": "7",
    }
    r = await api.get("/x-q?limit=x")
    assert (r.status, r.body["error"]["message"]) == (400, "limit: must be of type integer")
    r = await api.get("/x-q?limit=99")
    assert (r.status, r.body["error"]["message"]) == (400, "limit: must be <= 50")
    doc = (await api.get("/openapi.json", key="")).body
    params = {p["name"]: p["schema"] for p in doc["paths"]["/x-q"]["get"]["parameters"]}
    assert params["limit"]["type"] == "integer" and params["full"]["type"] == "boolean"


# -- options and migrations -----------------------------------------------------------
OPTIONS = (
    Option("max_days", int, 90, "longest span"),
    Option("label", str, "spend", "a label"),
    Option("strict", bool, False, "refuse more"),
)


@pytest.fixture
def options_plugin(module_plugin):
    got = {}

    def setup(gw):
        got["opts"] = gw.options(*OPTIONS)

    return module_plugin("tests.fake_spendy", setup), got


async def test_plugin_options_from_defaults_file_and_environment(
    make_gateway, options_plugin, tmp_path
):
    name, got = options_plugin
    await make_gateway(plugins=(name,))
    assert (got["opts"].max_days, got["opts"].label, got["opts"].strict) == (90, "spend", False)
    conf = tmp_path / "x.toml"
    conf.write_text('[plugin.fake_spendy]\nmax_days = 7\nlabel = "from file"\n')
    s = settings_mod.load(str(conf), env={"XAI_FAKE_SPENDY_MAX_DAYS": "30"})
    await make_gateway(plugins=(name,), plugin_options=s.plugin_options, plugin_env=s.plugin_env)
    assert (got["opts"].max_days, got["opts"].label) == (30, "from file")


async def test_bad_plugin_options_stop_the_start_in_one_line(make_gateway, options_plugin):
    name, _ = options_plugin
    with pytest.raises(StartError, match="^plugin option fake_spendy.max_days: cannot use 'many'"):
        await make_gateway(plugins=(name,), plugin_env={"XAI_FAKE_SPENDY_MAX_DAYS": "many"})
    with pytest.raises(StartError, match=r"unknown option 'max_day' \(known: label, max_days"):
        await make_gateway(plugins=(name,), plugin_options={"fake_spendy": {"max_day": 3}})
    with pytest.raises(StartError, match=r"\[plugin.other\]: no loaded plugin declares"):
        await make_gateway(plugins=(name,), plugin_options={"other": {"x": 1}})


NOTES = Table("notes", (Column("id", "int"), Column("text", "text")), primary_key=("id",))


async def test_plugin_migrations_run_once_in_order(make_gateway, module_plugin, tmp_path):
    steps: list = [NOTES]
    name = module_plugin("tests.fake_notes", lambda gw: gw.migrations(*steps))
    db = tmp_path / "m.db"
    api = await kit_start(db, plugins=(name,))
    await api.gw.store.write([o.RowInsert("notes", {"id": 1, "text": "kept"})])
    await api.close()
    steps.append([AddColumn("notes", Column("tag", "text", null=True))])
    api = await kit_start(db, plugins=(name,))
    rows = await api.gw.store.rows("notes")
    assert rows == [{"id": 1, "text": "kept", "tag": None}]
    version = await api.gw.store.scalar(
        "SELECT version FROM plugin_schema WHERE plugin = 'fake_notes'"
    )
    assert version == 2
    # Step 3 meets a column someone added by hand: the start stops, naming the step.
    await api.gw.store.write([("ALTER TABLE notes ADD COLUMN extra TEXT", ())])
    await api.close()
    steps.append(AddColumn("notes", Column("extra", "text", null=True)))
    with pytest.raises(
        StartError, match="plugin migration 'fake_notes': step 3 failed: duplicate column"
    ):
        await kit_start(db, plugins=(name,))


async def test_plugin_migrations_are_data_not_sql(make_gateway, module_plugin):
    sql = module_plugin("tests.fake_sql", lambda gw: gw.migrations("CREATE TABLE x (y)"))
    with pytest.raises(StartError, match="'fake_sql': step 1: a step is a Table, an AddColumn"):
        await make_gateway(plugins=(sql,))
    bad = Table("notes", (Column("id", "blob"),))
    typed = module_plugin("tests.fake_blob", lambda gw: gw.migrations(bad))
    with pytest.raises(StartError, match="step 1: column id: type 'blob' is not one of"):
        await make_gateway(plugins=(typed,))


# -- the documented names ----------------------------------------------------------------
def test_one_place_imports_every_documented_name():
    from xaiproxy import api

    for name in api.__all__:
        assert getattr(api, name) is not None
        assert f"`{name}" in README or name in ("usage", "context_of"), name
    assert api.ApiError(400, api.Code.INVALID_REQUEST, "x").code == "invalid_request"


def test_request_context_fields_are_documented():
    for name in RequestContext.__dataclass_fields__:
        assert f"`ctx.{name}`" in README, f"ctx.{name} is not in plugins/README.md"


def _writer_threads() -> list:
    return [t for t in threading.enumerate() if t.name.startswith("xaiproxy-writer")]


@pytest.fixture
def failing_start():
    """A plugin whose startup work raises, after the store and the sessions were opened."""
    module = types.ModuleType("tests.fake_failing_start")
    stopped = []

    def setup(gw):
        async def start():
            raise RuntimeError("plugin cannot start")

        async def stop():
            stopped.append(True)

        gw.on_startup(start)
        gw.on_shutdown(stop)

    module.setup = setup
    sys.modules[module.__name__] = module
    yield module.__name__, stopped
    del sys.modules[module.__name__]


async def test_a_plugin_failing_at_start_unwinds_what_was_opened(tmp_path, failing_start):
    name, stopped = failing_start
    before = _writer_threads()
    settings = settings_mod.load(env={}, db=str(tmp_path / "f.db"), plugins=("keys", name))
    app = create_app(settings)
    gw = app[GATEWAY]
    runner = web.AppRunner(app)
    with pytest.raises(RuntimeError, match="plugin cannot start"):
        await runner.setup()
    assert gw.session is not None and gw.store._conn is not None  # they were opened
    await runner.cleanup()
    assert gw.session.closed and gw.checked_session.closed
    assert gw.store.closed and _writer_threads() == before
    assert stopped == [True]  # the plugins' stop ran too


def test_a_plugin_failing_in_setup_opens_nothing(tmp_path):
    module = types.ModuleType("tests.fake_failing_setup")

    def setup(gw):
        raise RuntimeError("bad plugin")

    module.setup = setup
    sys.modules[module.__name__] = module
    try:
        settings = settings_mod.load(env={}, db=str(tmp_path / "s.db"), plugins=(module.__name__,))
        before = _writer_threads()
        with pytest.raises(RuntimeError, match="bad plugin"):
            create_app(settings)
        assert _writer_threads() == before and not (tmp_path / "s.db").exists()
    finally:
        del sys.modules[module.__name__]
