"""xaiproxy's test kit, installed with the package: test a plugin without the project's checkout.

- `gateway(**settings)`: an async context manager giving a started gateway (`Api`) on
  127.0.0.1 with a fresh SQLite file; `start_gateway(...)` is the same without `async with`.
- `start_upstream()` / `FakeUpstream`: a fake OpenAI/Anthropic provider on a real port.
- `add_user`, `add_key`, `set_config`, `add_usage`: make accounts, provider keys, usage.
- `flush(api)`: wait for the batched writer. Data-plane writes (usage, balances) become
  readable only after its next commit.
- pytest fixtures (`make_gateway`, `upstream`, `make_upstream`) come from the pytest
  plugin `xaiproxy.testing.pytest_plugin`, registered through the `pytest11` entry point.

Nothing here imports pytest.
"""

from .gateway import (
    ROOT_KEY,
    Api,
    Reply,
    add_key,
    add_usage,
    add_user,
    anthropic_body,
    chat,
    flush,
    gateway,
    set_config,
    start_gateway,
    update_user,
)
from .upstream import JSON_COMPLETION, PROMPT_TOKENS, FakeUpstream, Seen, start_upstream

__all__ = [
    "ROOT_KEY",
    "JSON_COMPLETION",
    "PROMPT_TOKENS",
    "Api",
    "FakeUpstream",
    "Reply",
    "Seen",
    "add_key",
    "add_usage",
    "add_user",
    "anthropic_body",
    "chat",
    "flush",
    "gateway",
    "set_config",
    "start_gateway",
    "start_upstream",
    "update_user",
]
