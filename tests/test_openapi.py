"""/openapi.json: valid OpenAPI 3.1, built from the registered routes, and true to the server.

The last test runs schemathesis (a separate process, so the gateway keeps serving on
this test's event loop) against the management API with the root key.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest
from aiohttp import web

from tests.helpers import ROOT_KEY
from xaiproxy import openapi, server
from xaiproxy import settings as settings_mod
from xaiproxy.app import create_app


async def test_document_is_valid_openapi_31(api):
    validator = pytest.importorskip("openapi_spec_validator")
    r = await api.get("/openapi.json", key="")
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    validator.validate(r.body)
    assert r.body["openapi"] == "3.1.0"
    assert r.body["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_every_registered_route_is_documented_with_its_own_schemas(api):
    doc = (await api.get("/openapi.json", key="")).body
    assert api.gw.routes, "no management route registered"
    for spec in api.gw.routes:
        op = doc["paths"][spec.path][spec.method.lower()]
        if spec.body is not None:
            assert op["requestBody"]["content"]["application/json"]["schema"] == spec.body
        query = {p["name"]: p["schema"] for p in op.get("parameters", ()) if p["in"] == "query"}
        assert query == (spec.query or {}).get("properties", {})
        assert op["responses"]["4XX"] == {"$ref": "#/components/responses/Error"}
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


async def test_data_plane_and_operations_paths_are_described(api):
    doc = (await api.get("/openapi.json", key="")).body
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/embeddings"):
        assert doc["paths"][path]["post"]["tags"] == ["data-plane"]
    assert "get" in doc["paths"]["/v1/models"]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/metrics"]["get"]["security"] == []
    error = doc["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["message", "type", "code"]


async def test_route_parameters_and_auth_rules():
    """Unit level: path params from {name} and {name:regex}; roles in the description."""

    async def handler(call):  # pragma: no cover - never called
        return call.json({})

    from xaiproxy.plugins import RouteSpec

    spec = RouteSpec("PUT", "/x-things/{id:[0-9]+}", handler, root_only=True, auth=False)
    op = openapi.management_operation(spec)
    assert op["parameters"][0] == {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    }
    assert op["security"] == [] and op["description"] == "Root only."
    assert op["operationId"] == "put_x_things_by_id"


async def test_metrics_off_is_not_documented(make_gateway):
    api = await make_gateway(metrics=False)
    doc = (await api.get("/openapi.json", key="")).body
    assert "/metrics" not in doc["paths"]


def _schemathesis() -> str | None:
    local = Path(sys.executable).parent / "schemathesis"
    return str(local) if local.exists() else shutil.which("schemathesis")


@pytest.fixture
async def served(tmp_path):
    """The gateway behind the production runner (malformed HTTP answered as JSON errors)."""
    settings = settings_mod.load(
        env={}, db=str(tmp_path / "st.db"), root_key=ROOT_KEY, access_log="", flush_interval=0.02
    )
    runner = server.GatewayRunner(create_app(settings), handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


@pytest.mark.timeout(90)
async def test_schemathesis_finds_no_500_and_no_answer_off_its_schema(served, tmp_path):
    exe = _schemathesis()
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    cmd = [
        exe,
        "run",
        f"{served}/openapi.json",
        "--header",
        f"Authorization: Bearer {ROOT_KEY}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,negative_data_rejection",
        "--exclude-tag",
        "data-plane",
        "--exclude-tag",
        "operations",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "8",
        "--max-time",
        "30",
        "--seed",
        "1",
        "--workers",
        "1",
        "--no-shrink",
        "--suppress-health-check",
        "all",
        "--output-sanitize",
        "true",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 80)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert " passed" in text and "Tested: 0" not in text, text[-3000:]


def test_every_setting_is_documented_with_its_variable():
    doc = (Path(__file__).parent.parent / "docs" / "OPERATIONS.md").read_text()
    missing = [
        key
        for key in settings_mod.Settings.__dataclass_fields__
        if key not in settings_mod.PLUGIN_SOURCES
        if f"| `{key}` |" not in doc or f"`XAI_{key.upper()}`" not in doc
    ]
    assert not missing
