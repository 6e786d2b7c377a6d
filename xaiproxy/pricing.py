"""Price table: USD per million tokens, looked up by the model actually sent upstream."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from . import __version__
from .globs import GlobTable, is_glob
from .settings import packaged

FIELDS = ("input", "output", "cached_input", "cache_write")


@dataclass(frozen=True, slots=True)
class Price:
    input: float
    output: float
    cached_input: float
    cache_write: float

    @classmethod
    def of(cls, entry: dict) -> Price:
        inp = float(entry.get("input", 0.0))
        return cls(
            inp,
            float(entry.get("output", 0.0)),
            float(entry.get("cached_input", inp)),
            float(entry.get("cache_write", inp)),
        )


FREE = Price(0.0, 0.0, 0.0, 0.0)


class Prices:
    """Exact name first, then the longest matching glob, then "*" (one compiled table)."""

    def __init__(self, table: dict[str, dict]) -> None:
        self.table = table
        entries = sorted(
            ((k, Price.of(v)) for k, v in table.items() if k != "*"), key=lambda kv: -len(kv[0])
        )
        self._table = GlobTable(entries, exact_first=True)
        self._fallback = Price.of(table["*"]) if "*" in table else FREE

    def __call__(self, model: str) -> Price:
        return self._table.value(model, self._fallback)

    def known(self, model: str) -> bool:
        """Whether the table names this model exactly (not through a glob)."""
        return model in self.table and not is_glob(model)

    def overlay(self, overrides: dict[str, dict]) -> Prices:
        return Prices({**self.table, **overrides}) if overrides else self

    def models(self) -> list[str]:
        return sorted(k for k in self.table if not is_glob(k))


class PricesError(ValueError):
    """The price table cannot be read; the message names the file."""


def read(path: str = "") -> tuple[str, str]:
    """(TOML text, where it came from) of the table at `path`, or of the shipped one."""
    if not path:
        source = packaged("prices.toml")
        return source.read_text(encoding="utf-8"), f"shipped with xaiproxy {__version__}: {source}"
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read(), path
    except OSError as exc:
        raise PricesError(f"price table {path}: {exc.strerror or exc}") from None


def parse(text: str, source: str) -> Prices:
    try:
        return Prices(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise PricesError(f"price table {source}: {exc}") from None


def load(path: str = "") -> Prices:
    """The table at `path` ("" = the one shipped in the package)."""
    return parse(*read(path))


def cost_usd(
    price: Price, prompt: int, completion: int, cached: int, cache_write: int = 0
) -> float:
    """List-price cost of one call; cached and cache-write tokens are part of `prompt`."""
    plain = max(prompt - cached - cache_write, 0)
    return (
        plain * price.input
        + cached * price.cached_input
        + cache_write * price.cache_write
        + completion * price.output
    ) / 1_000_000
