"""GET /v1/models: the models a caller can reach, across the owner's vendors (SPEC 5, 13).

A model is listed when the caller's AllowModels (and its ancestors') let it through
and an enabled key on its level chain (within AllowLevels) (LEVEL_MAPPER, then SWITCH_OVER) serves it:
a key of a known vendor serves its families (Azure also its Config deployments), an
openai-compatible key of an unknown host serves anything. `owned_by` is that key's Type.
Runs from memory; not on the hot path.
"""

from __future__ import annotations

from . import mappers, vendors
from .routing import Router


def entries(gw, ctx) -> list[dict]:
    cfg, acc = ctx.config, ctx.account
    out = []
    for name in sorted(_names(gw, cfg, acc)):
        if not all(a.model_match is None or a.model_match(name) for a in acc.chain):
            continue
        owned_by = _reach(gw, cfg, acc, mappers.map_model(acc, cfg, name))
        if owned_by:
            out.append({"id": name, "object": "model", "created": 0, "owned_by": owned_by})
    return out


def _names(gw, cfg, acc) -> set[str]:
    names = set(cfg.prices.models())
    names.update(p for p in mappers.patterns(acc, cfg) if not _glob(p))
    for key in gw.state.owner_keys(acc.owner_acc.id):
        table = key.config.get("deployments") if key.type == "azure" else None
        if isinstance(table, dict):
            names.update(str(m) for m in table if not _glob(str(m)))
    return names


def _reach(gw, cfg, acc, model: str) -> str:
    """The Type of the first enabled key on the model's allowed level chain that serves it, or ''."""
    start = mappers.level_of(acc, cfg, model)
    for level in Router.levels(cfg.switch_over, start, acc.level_allowed):
        for key in sorted(gw.state.pool(acc.owner_acc.id, level), key=lambda k: k.id):
            if key.status and vendors.serves(key, model):
                return key.type
    return ""


def _glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")
