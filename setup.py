"""Only the package list lives here (the rest is in setup.cfg): every package under
xaiproxy/ is found, so a new subpackage cannot be left out of the wheel, and
plugins/ installs as `xaiproxy_plugins`."""

from setuptools import find_packages, setup

core = find_packages(include=["xaiproxy", "xaiproxy.*"])
plugins = [
    "xaiproxy_plugins" + name[len("plugins") :]
    for name in find_packages(include=["plugins", "plugins.*"])
]
setup(packages=core + plugins)
