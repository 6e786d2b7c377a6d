"""Azure OpenAI: deployment URLs and the api-version query, from the key's Config.

Config: `{"deployments": {"gpt-4o": "my-gpt4o", "gpt-4o-mini*": "mini"}, "api_version":
"2024-10-21"}`. Model names (globs allowed, exact names first) map to deployments; a
model no entry names goes to the deployment of the same name, Azure's usual habit.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from urllib.parse import quote

from yarl import URL

DEFAULT_API_VERSION = "2024-10-21"


def deployment_of(config: dict, model: str, default: str | None) -> str | None:
    table = config.get("deployments")
    if not isinstance(table, dict):
        return default
    if model in table:
        return str(table[model])
    for pattern, name in table.items():
        if fnmatchcase(model, pattern):
            return str(name)
    return default


def url(base: str, config: dict, raw_path: str, model: str) -> URL:
    """`/v1/chat/completions` -> `/openai/deployments/{deployment}/chat/completions?api-version=`."""
    path = raw_path.partition("?")[0]
    tail = path[3:] if path.startswith("/v1") else path
    deployment = quote(deployment_of(config, model, model) or "default", safe="")
    version = quote(str(config.get("api_version") or DEFAULT_API_VERSION), safe="")
    base = base.removesuffix("/openai")
    return URL(f"{base}/openai/deployments/{deployment}{tail}?api-version={version}", encoded=True)
