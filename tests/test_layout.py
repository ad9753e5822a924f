"""The layout docs/architecture.md describes: imports go from the facade to the
fast core only, the lower layers never reach into the server, every module is
in the map."""

from __future__ import annotations

import re

from helpers import ROOT

FAST = ROOT / "simplew" / "_fast"
FACADE_IMPORT = re.compile(r"^\s*(from|import|cimport)\s+simplew(?!\._fast)\b", re.M)
LOWER = sorted(FAST.glob("*.py*")) + [ROOT / "simplew" / "recovery.py"]


def test_the_fast_core_imports_nothing_of_the_facade():
    offenders = [
        f"{path.name}: {match.group(0).strip()}"
        for path in sorted(FAST.glob("*.p[yx]*"))
        if path.suffix in (".pyx", ".pxd", ".pxi", ".pyi")
        for match in FACADE_IMPORT.finditer(path.read_text())
        # stubs may name facade types for annotations
        if path.suffix != ".pyi"
    ]
    assert not offenders, offenders


def test_lower_layers_do_not_reach_into_the_server():
    """No private attribute of SimpleWServer, no getattr/hasattr on the server."""
    pattern = re.compile(r"server\._\w|getattr\((self\.)?(app|server)\b|hasattr\((self\.)?server\b")
    offenders = [
        f"{path.name}:{n}: {line.strip()}"
        for path in LOWER
        if path.suffix in (".py", ".pyx", ".pxd", ".pxi")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def test_architecture_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    modules = [p.name for p in (ROOT / "simplew").glob("*.py") if not p.name.startswith("__")]
    modules += [p.name for p in FAST.glob("*.pyx")] + [p.name for p in FAST.glob("*.pxi")]
    missing = [name for name in modules if f"`{name}`" not in text and name not in text]
    assert not missing, f"docs/architecture.md does not place {missing}"
    named = set(re.findall(r"`([a-z_]+\.(?:py|pyx|pxi))`", text))
    gone = [
        name
        for name in named
        if not (ROOT / "simplew" / name).exists() and not (FAST / name).exists()
    ]
    assert not gone, f"docs/architecture.md names files that do not exist: {gone}"
