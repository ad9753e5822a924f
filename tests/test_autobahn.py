"""RFC 6455 / 7692 conformance: the Autobahn TestSuite cases, run by kosoku.

kosoku drives every case against ``examples/echo.py`` (the same connection,
reassembly and frame code as controllers and multicast) and writes a report
per case; the test fails on any case Autobahn does not grade as passing.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASSING_CLOSE = {"OK", "INFORMATIONAL"}


def run_kosoku(port: int, outdir: Path, *selection: str) -> dict[str, dict]:
    kosoku = shutil.which("kosoku") or str(Path(sys.executable).parent / "kosoku")
    proc = subprocess.run(
        [kosoku, f"127.0.0.1:{port}", "-o", str(outdir), "-p", "2", *selection],
        capture_output=True,
        text=True,
        timeout=900,
    )
    index = outdir / "index.json"
    assert index.exists(), f"kosoku wrote no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = json.loads(index.read_text())
    return next(iter(results.values()))


def summary_table(cases: dict[str, dict]) -> str:
    """Markdown table, section × (passed, failed), for README."""
    table: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for case, result in cases.items():
        ok = result["behavior"] in PASSING and result["behaviorClose"] in PASSING_CLOSE
        table[int(case.split(".")[0])]["passed" if ok else "failed"] += 1
    lines = ["| section | passed | failed |", "| --- | --- | --- |"]
    for section in sorted(table):
        lines.append(f"| {section} | {table[section]['passed']} | {table[section]['failed']} |")
    return "\n".join(lines)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "sections",
    [
        pytest.param(["-x", "12.*", "-x", "13.*"], id="sections-1-10"),
        pytest.param(["-i", "12.*", "-i", "13.*"], id="sections-12-13-permessage-deflate"),
    ],
)
def test_autobahn(run_example, tmp_path, sections):
    _, port = run_example("echo.py")
    cases = run_kosoku(port, tmp_path, *sections)
    assert cases, "no case ran"
    print(summary_table(cases))
    failed = {
        case: (r["behavior"], r["behaviorClose"])
        for case, r in cases.items()
        if r["behavior"] not in PASSING or r["behaviorClose"] not in PASSING_CLOSE
    }
    assert not failed, f"{len(failed)} of {len(cases)} cases failed: {sorted(failed.items())[:40]}"
