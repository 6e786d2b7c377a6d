"""Glob tables (mappers, MODEL_LIMITS, PRICING): compiled once, looked up in bounded time.

A table is an ordered list of (pattern, value). Exact names are one dict probe; all
the globs of a table are alternatives of ONE regex, so a name that matches no glob
costs a single `match` in C. Which glob matched comes from blocks of `BLOCK`
patterns, each one regex too: at most `BLOCK` block tests and `BLOCK` pattern tests,
whatever the table's size. (Capturing groups would say which alternative matched in
one call, but sre saves every group's mark on each alternative: quadratic.) Results
are kept in a fixed-size LRU cache per table, so a repeated name costs one cache hit.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable
from typing import Any

CACHE_SIZE = 4096  # model names remembered per table
BLOCK = 32  # globs per block regex

Hit = tuple[str, Any]  # (the pattern that matched, its value)


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _any_of(patterns: list[str]):
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match


class _FirstGlob:
    """The index of the first of `patterns` that matches a name, in bounded time.

    Only the whole-table regex is compiled up front (a config save stays cheap); a
    block and its patterns are compiled the first time a name gets that far.
    """

    __slots__ = ("any", "patterns", "blocks")

    def __init__(self, patterns: list[str]) -> None:
        self.any = _any_of(patterns)
        self.patterns = patterns
        self.blocks: dict[int, tuple] = {}

    def _block(self, start: int) -> tuple:
        block = self.blocks.get(start)
        if block is None:
            chunk = self.patterns[start : start + BLOCK]
            singles = [re.compile(fnmatch.translate(p)).match for p in chunk]
            block = self.blocks[start] = (_any_of(chunk), singles)
        return block

    def first(self, name: str) -> int | None:
        if not self.any(name):
            return None
        for start in range(0, len(self.patterns), BLOCK):
            block, singles = self._block(start)
            if block(name):
                return start + next(j for j, one in enumerate(singles) if one(name))
        return None


class GlobTable:
    """`lookup(name)` -> (pattern, value) of the matching entry, or None.

    `exact_first`: an exact name wins over every glob (PRICING, MODEL_LIMITS); else the
    first entry in table order wins, exact or glob (mappers: "first match wins").
    """

    __slots__ = ("entries", "exact_first", "_exact", "_globs", "_match", "lookup")

    def __init__(self, entries: Iterable[tuple[str, Any]], exact_first: bool = False) -> None:
        self.entries = list(entries)
        self.exact_first = exact_first
        self._exact: dict[str, int] = {}
        self._globs: list[int] = []  # entry index of each regex alternative
        for i, (pattern, _value) in enumerate(self.entries):
            if is_glob(pattern):
                self._globs.append(i)
            else:
                self._exact.setdefault(pattern, i)
        self._match = _FirstGlob([self.entries[i][0] for i in self._globs]) if self._globs else None
        self.lookup = functools.lru_cache(maxsize=CACHE_SIZE)(self._find)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def _find(self, name: str) -> Hit | None:
        exact = self._exact.get(name)
        if exact is not None and (self.exact_first or not self._globs):
            return self.entries[exact]
        n = self._match.first(name) if self._match is not None else None
        glob = self._globs[n] if n is not None else None
        if exact is None and glob is None:
            return None
        best = min(i for i in (exact, glob) if i is not None)
        return self.entries[best]

    def value(self, name: str, default: Any = None) -> Any:
        hit = self.lookup(name)
        return default if hit is None else hit[1]
