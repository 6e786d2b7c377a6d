"""GET /openapi.json: an OpenAPI 3.1 document built at startup from the registered routes.

The management part comes from `gw.routes`: the same JSON Schemas the handlers
validate with (OpenAPI 3.1 speaks JSON Schema 2020-12, as `jsonschema` does), so the
document cannot drift from the code. The data plane and the operations endpoints
are described here, briefly, because they follow OpenAI's and Anthropic's own specs.
"""

from __future__ import annotations

import copy
import re

import orjson
from aiohttp import web

from . import __version__, responses

_PARAM_RE = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")  # aiohttp's {name} and {name:regex}

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"const": "error", "description": "only on /v1/messages (Anthropic's shape)"},
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": "string"},
            },
            "required": ["message", "type", "code"],
        },
    },
    "required": ["error"],
}
_JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
ERROR_RESPONSES = {
    "4XX": {"$ref": "#/components/responses/Error"},
    "5XX": {"$ref": "#/components/responses/Error"},
}

# (method, path, summary, takes a JSON body with `model`)
DATA_PLANE = [
    ("POST", "/v1/chat/completions", "OpenAI Chat Completions (plain or SSE stream)", True),
    ("POST", "/v1/completions", "OpenAI legacy Completions", True),
    ("POST", "/v1/responses", "OpenAI Responses", True),
    ("POST", "/v1/embeddings", "OpenAI Embeddings", True),
    ("POST", "/v1/moderations", "OpenAI Moderations", True),
    ("POST", "/v1/messages", "Anthropic Messages (x-api-key or Bearer)", True),
    ("POST", "/v1/images/generations", "OpenAI image generation", True),
    (
        "POST",
        "/v1/audio/transcriptions",
        "OpenAI audio (multipart; model read from the form)",
        False,
    ),
    ("POST", "/v1/audio/speech", "OpenAI text to speech", True),
    ("GET", "/v1/models", "Models the caller may use, in OpenAI's list format", False),
]
DATA_PLANE_PATHS = frozenset(path for _m, path, _s, _b in DATA_PLANE)
OPS = [
    ("/healthz", "Liveness (no auth)"),
    ("/readyz", "Readiness: 503 while draining (no auth)"),
    ("/openapi.json", "This document (no auth)"),
]


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", _PARAM_RE.sub(r"by_\1", path)).strip("_")
    return f"{method.lower()}_{words or 'root'}"


def _path_params(path: str) -> list[dict]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in _PARAM_RE.findall(path)
    ]


def _query_params(schema: dict | None) -> list[dict]:
    """A query JSON Schema (an object of strings) -> one OpenAPI parameter per property."""
    if not schema:
        return []
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": copy.deepcopy(prop)}
        for name, prop in schema.get("properties", {}).items()
    ]


def _success(spec) -> dict:
    schema = copy.deepcopy(spec.response) if spec.response else {}
    return {"description": "Success", "content": {"application/json": {"schema": schema}}}


def management_operation(spec) -> dict:
    """One RouteSpec as an OpenAPI operation."""
    op: dict = {
        "operationId": _operation_id(spec.method, spec.path),
        "summary": spec.summary or spec.path,
        "tags": [spec.tag or "management"],
        "responses": {"2XX": _success(spec), **ERROR_RESPONSES},
    }
    params = _path_params(spec.path) + _query_params(spec.query)
    if params:
        op["parameters"] = params
    if spec.body is not None:
        op["requestBody"] = {
            "required": bool(spec.body.get("required") or spec.body.get("minProperties")),
            "content": {"application/json": {"schema": copy.deepcopy(spec.body)}},
        }
    if not spec.auth:
        op["security"] = []
    notes = ["Root only." if spec.root_only else "", "Owners only." if spec.owner_only else ""]
    if any(notes):
        op["description"] = " ".join(n for n in notes if n)
    return op


def _data_plane_operation(method: str, path: str, summary: str, has_body: bool) -> dict:
    op: dict = {
        "operationId": _operation_id(method, path),
        "summary": summary,
        "tags": ["data-plane"],
        "description": "Proxied to the owner's provider keys; same body and answer as the provider.",
        "responses": {
            "200": {
                "description": "The provider's answer, streamed as it arrives",
                "content": {"application/json": {"schema": {}}, "text/event-stream": {}},
            },
            **ERROR_RESPONSES,
        },
    }
    if has_body:
        body = {
            "type": "object",
            "properties": {"model": {"type": "string"}, "stream": {"type": "boolean"}},
            "required": ["model"],
        }
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _ops_operation(path: str, summary: str) -> dict:
    content = {"text/plain": {}} if path == "/metrics" else {"application/json": {"schema": {}}}
    return {
        "operationId": _operation_id("GET", path),
        "summary": summary,
        "tags": ["operations"],
        "security": [],
        "responses": {"200": {"description": "OK", "content": content}, **ERROR_RESPONSES},
    }


def build(gw) -> dict:
    """The whole document, from what is registered now."""
    paths: dict[str, dict] = {}
    for spec in gw.routes:
        path = _PARAM_RE.sub(r"{\1}", spec.path)
        paths.setdefault(path, {})[spec.method.lower()] = management_operation(spec)
    for method, path, summary, has_body in DATA_PLANE:
        paths.setdefault(path, {})[method.lower()] = _data_plane_operation(
            method, path, summary, has_body
        )
    ops = OPS + ([("/metrics", "Prometheus metrics (no auth)")] if gw.settings.metrics else [])
    for path, summary in ops:
        paths.setdefault(path, {})["get"] = _ops_operation(path, summary)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "xaiproxy",
            "version": __version__,
            "description": "AI API gateway: OpenAI/Anthropic data plane and management API.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "sk-Xvs... key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
            "schemas": {"Error": ERROR_SCHEMA},
            "responses": {"Error": {"description": "Error", "content": _JSON_ERROR}},
        },
    }


def setup(app: web.Application, gw) -> None:
    """Serve /openapi.json, built once when the app starts (every plugin has registered)."""
    document: list[bytes] = []

    async def freeze(app: web.Application) -> None:
        document[:] = [orjson.dumps(build(gw))]

    async def serve(request: web.Request) -> web.Response:
        return responses.encoded(document[0])

    app.on_startup.append(freeze)
    app.router.add_get("/openapi.json", serve)
