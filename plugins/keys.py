"""(being written)"""


def setup(gw) -> None:
    pass
