"""MODEL_MAPPER and LEVEL_MAPPER along the tree (SPEC 3): the nearest rule wins.

An account's own ModelMapper/LevelMapper first, then each ancestor's up to its owner
(inclusive), then the owner's config; with the owner's LOCK_USER_MAPPER only the config
counts. Each account's rules are compiled when they change (`Account.compile`), so a
lookup only walks the chain and matches.
"""

from __future__ import annotations

from collections.abc import Iterator

from .ownerconf import OwnerConfig
from .state import Account


def upward(acc: Account) -> Iterator[Account]:
    """acc, its parent, ... up to its owner."""
    chain = acc.chain
    return reversed(chain[acc.owner_acc.level :])


def map_model(acc: Account, cfg: OwnerConfig, model: str) -> str:
    if not cfg.lock_user_mapper:
        for a in upward(acc):
            for match, _pattern, target in a.model_rules:
                if match(model):
                    return target
    return cfg.map_model(model)


def level_of(acc: Account, cfg: OwnerConfig, model: str) -> int:
    if not cfg.lock_user_mapper:
        for a in upward(acc):
            for match, _pattern, level in a.level_rules:
                if match(model):
                    return level
    return cfg.level_of(model)


def patterns(acc: Account, cfg: OwnerConfig) -> list[str]:
    """Every model name a ModelMapper in force for acc maps from."""
    names = [pattern for pattern, _target in cfg.model_mapper.entries]
    if not cfg.lock_user_mapper:
        names += [pattern for a in upward(acc) for _match, pattern, _target in a.model_rules]
    return names
