"""The vendor fakes' fixture as a pytest plugin: `pytest_plugins = ["tests.vendor_fixtures"]`."""

from tests.vendor_fakes import make_vendor  # noqa: F401
