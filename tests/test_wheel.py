"""Packaging: the sdist and a wheel built from it, installed and run in a fresh venv.

``python -m build`` (isolated: it installs build-system.requires, Cython and
picows, from the package index) builds the sdist, then the wheel from the
sdist, so a file missing from the sdist breaks the wheel. The wheel goes into
a new ``python -m venv`` with its dependencies from the index, and
tests/wheel_smoke.py serves from there. ``auditwheel show`` must report the
wheel and the manylinux policy it could be repaired to (a wheel built here is
a plain ``linux_*`` one; cibuildwheel builds the manylinux/musllinux ones).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from helpers import ROOT, free_port

pytestmark = pytest.mark.timeout(600)

COMPILED = ["frames", "deflate", "gate", "connection", "router", "hub", "http"]


def copy_sources(dest: Path) -> Path:
    """What the build needs, without the in-place build products of the work tree."""
    src = dest / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    products = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.c", "build")
    annotations = shutil.ignore_patterns("*.html")  # cython -a pages, beside the .pyx

    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = set(products(directory, names))
        if Path(directory).name == "_fast":
            ignored |= set(annotations(directory, names))
        return ignored

    shutil.copytree(ROOT / "simplew", src / "simplew", ignore=ignore)
    return src


def run_command(
    cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{out[-6000:]}"
    )
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel) built with ``python -m build``."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = copy_sources(tmp)
    dist = tmp / "dist"
    # without debug info as cibuildwheel builds them; -O0: the C compiler takes a quarter
    # of the time, and nothing here measures speed
    env = dict(os.environ, CFLAGS="-g0", SIMPLEW_OPTIMIZE="-O0")
    run_command(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
        cwd=tmp,
        timeout=480,
        env=env,
    )
    sdists = list(dist.glob("simplew-*.tar.gz"))
    wheels = list(dist.glob("simplew-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(dist.iterdir())
    return sdists[0], wheels[0]


def test_sdist_has_the_sources(built):
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for required in (
        "pyproject.toml",
        "setup.py",
        "README.md",
        "PKG-INFO",
        "simplew/__init__.py",
        "simplew/auth.py",
        "simplew/cli.py",
    ):
        assert required in names, required
    for module in COMPILED:
        assert f"simplew/_fast/{module}.pyx" in names
    for pxd in Path(ROOT / "simplew" / "_fast").glob("*.pxd"):
        assert f"simplew/_fast/{pxd.name}" in names


def test_wheel_contents_and_metadata(built):
    _, wheel = built
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert wheel.name.startswith("simplew-") and f"-{tag}-{tag}-" in wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(
            zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    for module in COMPILED:
        assert any(re.fullmatch(rf"simplew/_fast/{module}\.[^/]+\.(so|pyd)", n) for n in names), (
            module
        )
    assert not any(n.endswith(".c") for n in names), "generated C sources belong in the sdist only"
    assert "simplew/auth.py" in names and "simplew/_fast/connection.pxd" in names
    assert "simplew/js/simplew.js" in names and "simplew/js/admin.html" in names
    assert "License-Expression: MIT" in metadata
    requires = [
        Requirement(line.split(":", 1)[1].strip())
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]

    def needed(extra: str = "") -> dict[str, Requirement]:
        env = {"extra": extra, "sys_platform": "linux"}
        return {r.name.lower(): r for r in requires if r.marker is None or r.marker.evaluate(env)}

    assert {name: r.specifier for name, r in needed().items()} == {
        "picows": SpecifierSet(">=2.3.1,<2.4"),
        "aiofastnet": SpecifierSet(">=1.2.0,<2"),
        "uvloop": SpecifierSet(">=0.22.1,<1"),
        "httptools": SpecifierSet(">=0.9.0,<1"),
        "msgspec": SpecifierSet(">=0.19,<1"),
    }
    assert needed("redis").keys() - needed().keys() == {"redis", "hiredis"}
    assert needed("jwt").keys() - needed().keys() == {"pyjwt"}
    assert needed("test")["simplew"].extras == {"redis", "jwt"}  # the tests need both
    for extra in ("redis", "jwt", "test"):
        assert f"Provides-Extra: {extra}" in metadata
    assert "simplew = simplew.cli:main" in entry_points


def new_venv(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh ``python -m venv``: (its bin directory, an environment that leaves the work tree out)."""
    venv = tmp_path / "venv"
    run_command([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return venv / ("Scripts" if os.name == "nt" else "bin"), env


def pip(bindir: Path, env: dict[str, str], *args: str) -> str:
    return run_command(
        [str(bindir / "python"), "-m", "pip", "--disable-pip-version-check", *args],
        cwd=bindir.parent.parent,
        timeout=300,
        env=env,
    )


def test_wheel_installs_and_serves_in_a_fresh_venv(built, tmp_path):
    _, wheel = built
    bindir, env = new_venv(tmp_path)
    venv, python = bindir.parent, bindir / "python"
    pip(bindir, env, "install", "--quiet", str(wheel))
    # from tmp_path, so that the installed simplew is imported, not the work tree
    out = run_command(
        [str(python), str(ROOT / "tests" / "wheel_smoke.py")], cwd=tmp_path, timeout=120, env=env
    )
    assert "simplew wheel smoke test passed" in out
    assert str(venv) in out, out
    out = run_command(
        [str(bindir / "simplew"), "serve", "--help"], cwd=tmp_path, timeout=60, env=env
    )
    assert "--certfile" in out

    # no Redis client without the [redis] extra, and a message that names it
    installed = {line.split("==")[0].lower() for line in pip(bindir, env, "freeze").split()}
    assert "picows" in installed and not installed & {"redis", "hiredis"}, installed
    proc = subprocess.run(
        [
            str(bindir / "simplew"),
            "serve",
            "--ws",
            "/ws",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--redis",
            "redis://127.0.0.1:6379",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "simplew: error: --redis needs the Redis client: pip install 'simplew[redis]'"
    ), proc.stderr
    proc = subprocess.run(
        [
            str(python),
            "-c",
            "from simplew import SimpleWServer\n"
            "server = SimpleWServer('127.0.0.1', 0, redis_url='redis://127.0.0.1')\n"
            "try:\n"
            "    server.start()\n"
            "except ImportError as exc:\n"
            "    print('ImportError:', exc, server.is_started)\n",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == (
        "ImportError: redis_url needs the Redis client: pip install 'simplew[redis]' False"
    ), proc.stdout + proc.stderr


def test_wheel_keeps_the_compatible_redis_and_uvloop_a_venv_has(built, tmp_path):
    _, wheel = built
    bindir, env = new_venv(tmp_path)
    # an application's own pins, older than the ones constraints.txt tests with
    pip(bindir, env, "install", "--quiet", "--no-deps", "redis==8.0.1", "uvloop==0.22.1")
    report = tmp_path / "report.json"
    pip(bindir, env, "install", "--quiet", "--dry-run", "--report", str(report), f"{wheel}[redis]")
    to_install = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "redis" not in to_install and "uvloop" not in to_install, to_install
    assert {"simplew", "picows", "hiredis", "httptools", "aiofastnet"} <= to_install.keys()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="auditwheel is for Linux")
def test_auditwheel_show(built):
    _, wheel = built
    auditwheel = shutil.which("auditwheel", path=str(Path(sys.executable).parent)) or shutil.which(
        "auditwheel"
    )
    assert auditwheel, "auditwheel is in the test extra"
    out = run_command([auditwheel, "show", str(wheel)], cwd=wheel.parent, timeout=120)
    text = " ".join(out.split())
    assert wheel.name in text
    # a plain linux_* wheel is fine here: auditwheel names the policy it fits
    match = re.search(
        r'is consistent with the following platform tag: "((?:many|musl)linux_\d+_\d+_\w+)"', text
    )
    assert match, out
    arch = wheel.name.rsplit("linux_", 1)[1].removesuffix(".whl")
    assert match.group(1).endswith("_" + arch), (match.group(1), wheel.name)
    assert "system-provided shared libraries" in text and "libc.so.6" in text, out
