"""Fixtures shared by the plugin tests."""

import pytest

from tests.plugins.reports import new_user


@pytest.fixture
async def tree(api):
    """root -> alpha-team -> alpha-dev ; root -> beta-team. Returns {name: (id, key)}."""
    a = await new_user(api, "alpha-team", 100)
    a1 = await new_user(api, "alpha-dev", 10, key=a[1])
    b = await new_user(api, "beta-team", 100)
    return {"a": a, "a1": a1, "b": b}
