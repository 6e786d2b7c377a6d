"""The SSRF rule: one definition of a private provider address, for add time and connect time."""

import pytest

from xaiproxy import settings as settings_mod
from xaiproxy import ssrf


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1%eth0",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "nonsense",
    ],
)
def test_non_global_addresses_are_private(address):
    assert ssrf.is_private(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_global_addresses_are_not(address):
    assert not ssrf.is_private(address)


def test_rule_applies_to_non_root_owners_unless_the_operator_allows():
    strict, open_ = settings_mod.Settings(), settings_mod.Settings(allow_private_providers=True)
    assert ssrf.restricted(False, strict)
    assert not ssrf.restricted(True, strict)
    assert not ssrf.restricted(False, open_)


async def test_resolution():
    assert await ssrf.resolves_private("localhost") is True
    assert await ssrf.resolves_private("127.0.0.1") is True
    assert await ssrf.resolves_private("no-such-host.invalid") is None
