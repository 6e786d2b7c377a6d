"""The data plane (being written)."""


def setup(app, gw) -> None:
    pass
