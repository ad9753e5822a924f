"""Run the atheris harnesses of this folder.

    python tests/fuzz/run.py --minutes 10 [--harness NAME ...] [--jobs 2]
    python tests/fuzz/run.py --replay          # each committed corpus file once
    python tests/fuzz/run.py --write-seeds     # (re)write the seeds into corpus/

Each harness runs in its own process with ``-rss_limit_mb`` and ``-timeout``
set, so unbounded memory and hangs are findings like crashes. The committed
corpus ``corpus/<harness>/`` is read (and so replayed first); new inputs go to
a temporary directory, never into the committed corpus. Crash, timeout and
OOM inputs are left in the work directory (``--workdir``, default a new
temporary one) and listed in the summary, with the number of inputs run and
the statuses / close codes each harness reached. A ``<harness>.dict`` next to
a harness is its libFuzzer dictionary. The exit status is 1 when anything was
found.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = HERE / "corpus"
HARNESSES = {  # name -> max input length
    "http_front": 4096,
    "ws_frames": 4096,
    "envelope": 4096,
    "inflate": 8192,
    "rest_binding": 2048,
    "request_head": 2048,
    "resume": 1024,
    "proxy_header": 4096,
}
RSS_LIMIT_MB = 1024
TIMEOUT_S = 10
ARTIFACT = re.compile(r"(crash|timeout|oom|leak|slow-unit)-[0-9a-f]+")


@dataclasses.dataclass
class Result:
    harness: str
    mode: str  # "fuzz" or "replay"
    returncode: int
    seconds: float
    executions: int
    findings: list[str]  # artifact files
    stats: dict[str, int]
    log: str  # path of the full output

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.findings


def _env(stats_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["SIMPLEW_FUZZ_STATS"] = str(stats_path)
    return env


def run_one(name: str, seconds: float, workdir: Path, replay: bool = False) -> Result:
    """Fuzz ``name`` for ``seconds`` (or, with ``replay``, run each committed
    corpus file once) in a subprocess."""
    mode = "replay" if replay else "fuzz"
    base = workdir / f"{name}-{mode}"
    stats_path = Path(f"{base}.stats.json")
    log_path = Path(f"{base}.log")
    corpus = CORPUS / name
    cmd = [
        sys.executable,
        str(HERE / f"{name}.py"),
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-timeout={TIMEOUT_S}",
        f"-max_len={HARNESSES[name]}",
        f"-artifact_prefix={base}-",
        "-print_final_stats=1",
    ]
    dictionary = HERE / f"{name}.dict"
    if dictionary.is_file():  # tokens the mutator inserts (header names, odd bytes)
        cmd.append(f"-dict={dictionary}")
    if replay:
        files = sorted(str(p) for p in corpus.iterdir() if p.is_file()) if corpus.is_dir() else []
        if not files:
            return Result(name, mode, 0, 0.0, 0, [], {}, "")
        cmd += files
    else:
        new = workdir / f"{name}-corpus"
        new.mkdir(parents=True, exist_ok=True)
        cmd += [f"-max_total_time={max(1, int(seconds))}", str(new)]
        if corpus.is_dir():
            cmd.append(str(corpus))
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=_env(stats_path),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=seconds + 300,
        )
    elapsed = time.monotonic() - start
    text = log_path.read_text("utf-8", "replace")
    m = re.findall(r"stat::number_of_executed_units: (\d+)", text)
    executions = int(m[-1]) if m else 0
    if replay and not m:
        executions = text.count("Executed ")
    findings = sorted(str(p) for p in workdir.glob(f"{base.name}-*") if ARTIFACT.search(p.name))
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        stats = {}
    return Result(name, mode, proc.returncode, elapsed, executions, findings, stats, str(log_path))


def run_all(
    names: list[str],
    seconds: float,
    jobs: int,
    workdir: Path,
    replay_first: bool = True,
    fuzz: bool = True,
) -> list[Result]:
    """For each harness: replay its committed corpus, then fuzz it; ``jobs`` at a time."""

    def both(name: str) -> list[Result]:
        out = []
        if replay_first:
            out.append(run_one(name, seconds, workdir, replay=True))
        if fuzz:
            out.append(run_one(name, seconds, workdir))
        return out

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        return [r for rs in pool.map(both, names) for r in rs]


def summary(results: list[Result]) -> str:
    lines = []
    for r in results:
        state = "ok" if r.ok else f"FAILED (exit {r.returncode})"
        lines.append(
            f"{r.harness:13} {r.mode:6} {state:18} {r.executions:>9} inputs "
            f"in {r.seconds:6.1f} s   log: {r.log}"
        )
        reached = {k: v for k, v in sorted(r.stats.items()) if k != "inputs"}
        if reached and r.mode == "fuzz":
            shown = ", ".join(f"{k}={v}" for k, v in list(reached.items())[:40])
            more = f" (+{len(reached) - 40} more)" if len(reached) > 40 else ""
            lines.append(f"    reached {len(reached)} outcomes: {shown}{more}")
        for f in r.findings:
            lines.append(f"    finding: {f}")
    return "\n".join(lines)


def write_seeds(names: list[str]) -> None:
    """Write each harness's ``seeds()`` into its committed corpus directory."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    for name in names:
        module = importlib.import_module(name)
        target = CORPUS / name
        target.mkdir(parents=True, exist_ok=True)
        for seed, data in module.seeds().items():
            (target / f"seed-{seed}").write_bytes(data)
        print(f"{name}: {len(module.seeds())} seeds in {target}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="per harness")
    parser.add_argument(
        "--harness",
        action="append",
        choices=sorted(HARNESSES),
        help="run only this one (repeatable)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="harnesses at a time")
    parser.add_argument("--workdir", help="where logs, new corpus and findings go")
    parser.add_argument("--replay", action="store_true", help="only replay the committed corpus")
    parser.add_argument("--write-seeds", action="store_true", help="write seeds() into corpus/")
    args = parser.parse_args()
    names = args.harness or list(HARNESSES)
    if args.write_seeds:
        write_seeds(names)
        return 0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="simplew-fuzz-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {workdir}", flush=True)
    results = run_all(
        names, args.minutes * 60, args.jobs, workdir, replay_first=True, fuzz=not args.replay
    )
    print(summary(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
