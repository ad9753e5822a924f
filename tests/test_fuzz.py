"""The atheris harnesses of tests/fuzz, run for a bounded time.

For each harness: every committed corpus file is replayed once (crash
regressions and seeds), then the harness fuzzes for $SIMPLEW_FUZZ_SECONDS
(default 10) seconds from that corpus, in its own process with libFuzzer's
RSS and per-input time limits. Two harnesses run at a time (the suite has 2
cores). Any crash, hang, OOM or invariant failure fails the test of that
harness; the libFuzzer log and the failing input are named in the message.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "simplew_fuzz_run", Path(__file__).resolve().parent / "fuzz" / "run.py"
)
fuzz_run = sys.modules["simplew_fuzz_run"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_run)

SECONDS = float(os.environ.get("SIMPLEW_FUZZ_SECONDS", "10"))


@pytest.fixture(scope="module")
def results(request, tmp_path_factory) -> dict[tuple[str, str], fuzz_run.Result]:
    # only the harnesses whose tests were selected (-k resume runs one harness)
    selected = {
        item.callspec.params["harness"]
        for item in request.session.items
        if "harness" in getattr(getattr(item, "callspec", None), "params", {})
    }
    names = [name for name in fuzz_run.HARNESSES if name in selected]
    workdir = tmp_path_factory.mktemp("fuzz")
    done = fuzz_run.run_all(names, SECONDS, 2, workdir)
    return {(r.harness, r.mode): r for r in done}


def _explain(r: fuzz_run.Result) -> str:
    tail = Path(r.log).read_text("utf-8", "replace")[-4000:] if r.log else ""
    return f"{r.harness} {r.mode}: exit {r.returncode}, findings {r.findings}\nlog {r.log}:\n{tail}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("harness", list(fuzz_run.HARNESSES))
def test_corpus_replays(results, harness):
    r = results[(harness, "replay")]
    assert r.ok, _explain(r)
    committed = list((fuzz_run.CORPUS / harness).iterdir())
    assert committed, f"no committed corpus for {harness}"
    assert r.executions >= len(committed), _explain(r)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("harness", list(fuzz_run.HARNESSES))
def test_fuzz_finds_nothing(results, harness):
    r = results[(harness, "fuzz")]
    assert r.ok, _explain(r)
    assert r.executions > 0, _explain(r)
    assert r.stats.get("inputs", 0) > 0, "the harness reported nothing it reached"
