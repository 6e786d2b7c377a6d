"""The fake upstream and setup helpers of the test kit (`xaiproxy.testing`), for this project's tests.

Fixtures: import them from here, or register `pytest_plugins = ["tests.fakes_fixtures"]`:
`upstream` (one fake) and `make_upstream` (a factory, for several providers). What the
fake does (faults, controls) is documented in `xaiproxy/testing/upstream.py`.
"""

from __future__ import annotations

from xaiproxy.testing import (  # noqa: F401 (re-exported)
    JSON_COMPLETION,
    PROMPT_TOKENS,
    FakeUpstream,
    Seen,
    add_key,
    add_user,
    anthropic_body,
    chat,
    set_config,
    update_user,
)
from xaiproxy.testing import pytest_plugin as kit
from xaiproxy.testing.gateway import BOTH_PROTOCOLS  # noqa: F401
from xaiproxy.testing.upstream import HANG_SECONDS, Fault  # noqa: F401

make_upstream, upstream = kit.make_upstream, kit.upstream  # fixtures


async def ready(make_gateway, upstream: FakeUpstream, **settings):
    """A gateway with one root provider key (level 1) pointing at `upstream`."""
    api = await make_gateway(**settings)
    await add_key(api, upstream)
    return api
