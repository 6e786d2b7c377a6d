"""The fake upstream's fixtures as a pytest plugin: `pytest_plugins = ["tests.fakes_fixtures"]`.

Registering them this way (instead of importing the fixture names) keeps test
modules free of names that their test parameters shadow.
"""

from tests.fakes import make_upstream, upstream  # noqa: F401
