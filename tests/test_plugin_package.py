"""A third-party plugin package, installed into a fresh virtualenv, passes its own tests there.

The package is `examples/plugins`; it is installed (not editable) together with a
non-editable install of this project, and its tests run from a copy outside the
checkout: the plugins load through their `xaiproxy.plugins` entry points and the
fixtures through the `pytest11` entry point of `xaiproxy.testing`.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(
    ".venv", ".git", "data", "build", "dist", "*.egg-info", "__pycache__", "*.db*", ".*cache"
)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, **kw)
    assert done.returncode == 0, (cmd, done.stdout[-3000:], done.stderr[-3000:])
    return done


@pytest.mark.timeout(300)
def test_example_plugins_pass_their_tests_in_a_fresh_virtualenv(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])  # this pip installs there
    py = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q"]
    run([*pip, str(src), str(src / "examples" / "plugins"), "pytest", "pytest-asyncio"])
    shutil.rmtree(src)  # nothing of the checkout is left to import from
    tests = shutil.copytree(ROOT / "examples" / "plugins" / "tests", tmp_path / "tests")
    # Until conf/ ships inside the package, point at the price table explicitly.
    conf = tmp_path / "xaiproxy.toml"
    conf.write_text(f"prices = {str(ROOT / 'conf' / 'prices.toml')!r}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XAI_", "PYTHON"))}
    env["XAI_CONFIG"] = str(conf)
    where = run(
        [
            str(py),
            "-c",
            "import xaiproxy, xai_examples; print(xaiproxy.__file__, xai_examples.__file__)",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert str(ROOT) not in where.stdout and where.stdout.count(str(venv)) == 2, where.stdout
    done = run(
        [
            str(py),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            str(tests),
        ],
        cwd=tmp_path,
        env=env,
    )
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-2000:]
