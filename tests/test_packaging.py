"""The built package outside the checkout: wheel and sdist, a fresh virtualenv, the zipapp.

One build per module (the `dist` fixture, the same commands as `make dist`, run on a
copy of the source tree so the checkout stays clean); dependencies come from one
wheelhouse, so the virtualenv and the zipapp install without the index.
"""

import asyncio
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes import chat
from tests.procs import clean_env, run, serve
from xaiproxy import __version__

pytest_plugins = ["tests.fakes_fixtures"]

# The first test also builds `dist` (~1 min idle, 2 on a busy 2-core CI): a hang guard.
pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
WHEEL = f"xaiproxy-{__version__}-py3-none-any.whl"
SDIST = f"xaiproxy-{__version__}.tar.gz"
# Files the web console may hold: any extension, nested, a LICENSE without one.
PROBES = ["index.html", "_probe/vendor/chart.min.js", "_probe/vendor/LICENSE", "_probe/a.woff2"]
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "data", "bench"
)


@dataclass
class Dist:
    out: Path  # wheel, sdist, zipapp
    venv: Path  # a fresh virtualenv with the wheel installed
    pyz: Path


def sh(*argv, **kw) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), **kw)
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Dist:
    top = tmp_path_factory.mktemp("dist")
    src, out, wheels, venv = top / "src", top / "out", top / "wheelhouse", top / "venv"
    shutil.copytree(ROOT, src, symlinks=True, ignore=SKIP)
    console = src / "xaiproxy" / "console"
    for name in PROBES:
        if not (console / name).exists():
            (console / name).parent.mkdir(parents=True, exist_ok=True)
            (console / name).write_text(f"probe {name}\n")
    py = sys.executable
    # As `make dist`: sdist, then the wheel built from that sdist.
    sh(py, "-m", "build", "--no-isolation", "--outdir", str(out), str(src))
    sh(py, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(out / WHEEL))
    offline = ["--no-index", "--find-links", str(wheels), "xaiproxy"]
    sh(py, "-m", "venv", "--without-pip", str(venv))
    pip_venv = [py, "-m", "pip", "--python", str(venv / "bin" / "python")]
    sh(*pip_venv, "install", "-q", "--no-compile", *offline)
    pyz = out / "xaiproxy.pyz"
    shebang = "/usr/bin/env python3"
    sh(
        py,
        "-m",
        "shiv",
        "--reproducible",
        "-c",
        "xaiproxy",
        "-p",
        shebang,
        "-o",
        str(pyz),
        *offline,
    )
    return Dist(out, venv, pyz)


def test_wheel_and_sdist_carry_config_prices_and_console_files(dist):
    with zipfile.ZipFile(dist.out / WHEEL) as whl:
        names = set(whl.namelist())
        for name in ("prices.toml", "xaiproxy.toml"):
            assert whl.read(f"xaiproxy/conf/{name}") == (ROOT / "conf" / name).read_bytes()
    assert {f"xaiproxy/console/{p}" for p in PROBES} <= names
    console = ROOT / "xaiproxy" / "console"
    shipped = {
        f"xaiproxy/console/{f.relative_to(console)}"
        for f in console.rglob("*")
        if f.is_file() and "__pycache__" not in f.parts
    }
    assert shipped and shipped <= names  # the console as it is in the checkout, every file
    modules = {
        f"xaiproxy/{f.relative_to(ROOT / 'xaiproxy')}" for f in (ROOT / "xaiproxy").rglob("*.py")
    }
    modules |= {
        f"xaiproxy_plugins/{f.relative_to(ROOT / 'plugins')}"
        for f in (ROOT / "plugins").rglob("*.py")
    }
    assert modules - names == set()  # every module, in every subpackage
    assert not [n for n in names if "__pycache__" in n or n.startswith(("conf/", "tests/"))]
    with tarfile.open(dist.out / SDIST) as sdist:
        members = {m.name.split("/", 1)[1]: m for m in sdist.getmembers() if "/" in m.name}
    for name in ("xaiproxy/conf/prices.toml", "conf/xaiproxy.toml", "tests/fixtures/v1.sql"):
        assert members[name].isfile(), name  # real files, not the repository's symlink
    assert {"deploy/Dockerfile", "docs/DEPLOY.md", "xaiproxy/console/_probe/a.woff2"} <= set(
        members
    )


async def proxied_request_is_billed(gw, upstream) -> None:
    """Root adds a provider key and a funded user; the user's streamed call shows in /x-bill."""
    key = {"SecretKey": "sk-upstream-pkg-abcdefghij", "Level": 1, "Provider": upstream.url}
    status, body = await gw.call("POST", "/x-keys", key)
    assert status == 201, body
    user = {"Name": "edge-user", "Email": "edge@example.com", "CreditGranted": 10}
    status, body = await gw.call("POST", "/x-users", user)
    assert status == 200, body
    user_key = body["User"]["SecretKey"]
    status, raw = await gw.call("POST", "/v1/chat/completions", chat(stream=True), user_key)
    assert status == 200 and raw.rstrip().endswith(b"data: [DONE]")
    assert len(upstream.seen) == 1
    for _ in range(100):  # the usage record lands with the writer's next group commit
        status, bill = await gw.call("GET", "/x-bill?days=1", key=user_key)
        assert status == 200, bill
        if bill["total_usage"]["requests"]:
            break
        await asyncio.sleep(0.05)
    assert bill["total_usage"]["requests"] == 1 and bill["total_usage"]["cost"] > 0
    status, me = await gw.call("GET", "/dashboard/x-user-status", key=user_key)
    assert me["balance"] == pytest.approx(10 - bill["total_usage"]["cost"], abs=1e-6)


async def test_installed_wheel_serves_from_an_empty_directory(dist, upstream, tmp_path):
    xaiproxy = str(dist.venv / "bin" / "xaiproxy")
    code, out, _ = await run([xaiproxy, "--version"], cwd=tmp_path)
    assert code == 0 and out.strip() == f"xaiproxy {__version__}"
    code, out, _ = await run(
        [
            str(dist.venv / "bin" / "python"),
            "-c",
            "import xaiproxy, sys; print(xaiproxy.__file__, sys.path)",
        ],
        cwd=tmp_path,
    )
    assert str(dist.venv) in out.split()[0] and str(ROOT) not in out
    code, out, err = await run([xaiproxy, "prices"], cwd=tmp_path)
    assert code == 0 and "site-packages/xaiproxy/conf/prices.toml" in out.splitlines()[0], err
    code, _, err = await run([xaiproxy, "init"], cwd=tmp_path)
    assert code == 0 and (tmp_path / "xaiproxy.toml").is_file(), err

    # No XAI_DB: the default ./data/xaiproxy.db, in this (otherwise empty) directory.
    gw = await serve([xaiproxy], None, tmp_path, XAI_FLUSH_INTERVAL="0.02")
    try:
        await proxied_request_is_billed(gw, upstream)
        status, page = await gw.call("GET", "/console/")  # its files, read from site-packages
        assert status == 200 and b"<html" in page.lower()
    finally:
        output = await gw.stop()
    assert (tmp_path / "data" / "xaiproxy.db").is_file()
    assert "Traceback" not in output


async def test_zipapp_serves_with_nothing_but_an_interpreter(dist, upstream, tmp_path):
    # -I -S: no site-packages, no environment, no current directory on the path.
    python = [sys._base_executable, "-I", "-S", str(dist.pyz)]
    env = {"SHIV_ROOT": str(tmp_path / "shiv"), "XAI_FLUSH_INTERVAL": "0.02"}
    code, out, err = await run([*python, "--version"], env=clean_env(**env))
    assert code == 0 and out.strip() == f"xaiproxy {__version__}", err
    gw = await serve(python, tmp_path / "edge.db", tmp_path, **env)
    try:
        await proxied_request_is_billed(gw, upstream)
    finally:
        await gw.stop()
