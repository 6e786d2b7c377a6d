"""Deleting an account with requests in flight, or in debt, with the money in Redis: the
same rule as in memory (SPEC 4), so the same tests, on gateways whose money is in Redis."""

import pytest

from tests import test_delete_inflight as memory

pytest_plugins = ["tests.fakes_fixtures"]


@pytest.fixture
def make_gateway(make_gateway, redis_url):
    async def make(**settings):
        api = await make_gateway(redis=redis_url, **settings)
        flush = api.gw.store.flush

        async def settled_flush():  # the tests flush the store: settle in Redis first
            await api.gw.shared.drain()
            await flush()

        api.gw.store.flush = settled_flush
        return api

    return make


test_delete_mid_stream_keeps_the_reservation = memory.test_delete_mid_stream_keeps_the_reservation
test_debt_of_a_stream_is_charged_to_the_parent = (
    memory.test_debt_of_a_stream_is_charged_to_the_parent
)
test_debt_is_charged_on_delete = memory.test_debt_is_charged_on_delete
test_an_expired_grant_never_forgives_debt = memory.test_an_expired_grant_never_forgives_debt
