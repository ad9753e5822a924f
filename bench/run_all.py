#!/usr/bin/env python3
"""Run every benchmark scenario against every available peer; write RESULTS.md and a chart.

    python bench/run_all.py --quick            # N=1000, 5 rounds, short rr/wrk: under 3 minutes
    python bench/run_all.py                    # N=1000,10000, 20 rounds, 3 repeats (15-20 minutes)
    python bench/run_all.py --peers simplew,picows --n 1000 --rounds 10 --scenarios fanout

Each peer is a server from bench/servers/ in its own process (a fresh one per
fan-out N, one for request/response, one for static files), pinned to the
first CPU while the load generator uses the others (``--no-pin`` to disable).
Writes bench/RESULTS.md, bench/results.png and bench/results.json (see --out,
--chart, --json). What RESULTS.md holds below the line KEEP_MARK (sections
written by hand, with the commands of other scripts) is kept.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
REFERENCES = ("picows", "websockets")
PACKAGES = [
    "simplew",
    "picows",
    "aiofastnet",
    "uvloop",
    "httptools",
    "Cython",
    "websockets",
    "aiohttp",
    "socketify",
    "cffi",
    "matplotlib",
    "psutil",
    "pytest-benchmark",
]
STATIC_NOTES = {
    "picows": "Connection: close (picows answers one non-101 response per connection)",
    "websockets": "Connection: close (process_request response; websockets closes after it)",
}


# ------------------------------------------------------------------ machine ---


def machine_info() -> dict:
    info = {
        "nproc": os.cpu_count(),
        "cpu_model": "?",
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            info["memory"] = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    info["nofile"] = " / ".join(
        str(x) for x in __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)
    )
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "simplew"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0:
            versions["simplew"] += f" (git {out.stdout.strip()}"
            versions["simplew"] += ", simplew/ modified)" if dirty.stdout.strip() else ")"
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        wrk = subprocess.run(
            [shutil.which("wrk") or "/usr/bin/wrk", "-v"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        first = (
            (wrk.stdout or wrk.stderr).strip().splitlines()[0]
        )  # "wrk 4.1.0 [epoll] Copyright..."
        versions["wrk"] = first.split(" Copyright")[0].removeprefix("wrk ").strip()
    except (OSError, subprocess.TimeoutExpired, IndexError):
        versions["wrk"] = "not found"
    info["versions"] = versions
    return info


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


# ----------------------------------------------------------------- results ---


def fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def ratio(value, ref) -> str:
    if value is None or ref is None or not ref or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value / ref:.2f}×"


def index(results: list[dict], scenario: str, metric: str) -> dict:
    """{(n-or-None, case): {peer: metric}} for rows without error."""
    table: dict = {}
    for r in results:
        if r["scenario"] != scenario or "error" in r or metric not in r:
            continue
        table.setdefault((r.get("n"), r["case"]), {})[r["peer"]] = r[metric]
    return table


def rows_by_case(results: list[dict], scenario: str) -> dict:
    """{(n-or-None, case): {peer: result row}}, error rows included."""
    table: dict = {}
    for r in results:
        if r["scenario"] == scenario:
            table.setdefault((r.get("n"), r["case"]), {})[r["peer"]] = r
    return table


def ordered_cases(results: list[dict], scenario: str) -> list:
    seen = []
    for r in results:
        if r["scenario"] == scenario:
            key = (r.get("n"), r["case"])
            if key not in seen:
                seen.append(key)
    return seen


def write_markdown(
    path: Path,
    results: list[dict],
    peers: list[str],
    skipped: dict,
    info: dict,
    opts: argparse.Namespace,
    command: str,
    pinning: str,
    elapsed: float,
) -> str:
    L: list[str] = []
    L.append("# simplew benchmark results")
    L.append("")
    L.append(f"Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {elapsed:.0f} s, with:")
    L.append("")
    L.append(f"    {command}")
    L.append("")
    L.append("## Machine and versions")
    L.append("")
    L.append(f"- CPU: {info['cpu_model']}, nproc {info['nproc']}, memory {info.get('memory', '?')}")
    L.append(
        f"- Kernel {info['kernel']}; open files limit (soft / hard) {info['nofile']}; loopback only"
    )
    L.append(f"- CPU pinning: {pinning}")
    L.append(
        f"- Load average (1/5/15 min) before the run: {info.get('loadavg_start', '?')}, "
        f"after: {info.get('loadavg_end', '?')} (the benchmark itself loads the machine; a high "
        "value before the run means other work shared the CPUs)"
    )
    L.append(f"- {info['implementation']} {info['python']}")
    L.append("- " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    L.append(f"- Peers measured: {', '.join(peers) or 'none'}")
    for peer, why in skipped.items():
        L.append(f"- **{peer} not measured**: {why}")
    L.append("")
    L.append("## Method")
    L.append("")
    L.append(
        "- Server CPU = user+system time of every thread of the server process, from "
        "`/proc/PID/task/*/schedstat` (ns) read before and after each measurement; "
        "`/proc/PID/stat` (utime+stime, 10 ms ticks) is read over each whole fan-out case as a "
        "cross-check (`results.json`: `case_cpu_ms_schedstat` vs `case_cpu_ms_stat`)."
    )
    L.append(
        "- Ratios are the peer's server CPU per unit divided by the reference's "
        "(below 1× = cheaper than the reference)."
    )
    L.append(
        f"- Fan-out: N clients over {opts.procs or 'auto (2, 4 above 5000)'} load-generator processes "
        "(raw sockets + epoll); one of them (on `/ctl`) sends `BCAST <count> <size> <round> <t_ns>`, "
        "the server sends `count` messages of `size` bytes to every client in that one callback. "
        f"{opts.warmup} warm-up + {opts.rounds} measured rounds per case; medians over the rounds. "
        "Latency = client receive time − trigger time (both `time.time_ns()`), p50/p99 over all "
        "deliveries of a round. Every client must receive every message of the round, in order."
    )
    L.append(
        f'- Request/response: `{{"url": "/ws/test/echo", "body": "..."}}` answered with the body; '
        f"{opts.rr_window} messages in flight per connection, {opts.repeats} run(s) of {opts.rr_seconds:g} s "
        "after a 0.5 s warm-up, medians; simplew through a Controller route, peers with json.loads + "
        "dict dispatch. Server CPU use near 100% means the server was the bottleneck; well below, "
        "the Python client was."
    )
    L.append(
        f"- Static: `wrk -t1 -c{opts.wrk_conns} -d{opts.wrk_seconds:g}s` on a 13-byte and a 100 KiB file, "
        f"{opts.repeats} run(s), medians."
    )
    checks = [
        (r["case_cpu_ms_schedstat"], r["case_cpu_ms_stat"])
        for r in results
        if r["scenario"] == "fanout" and "case_cpu_ms_stat" in r
    ]
    if checks:
        worst = max(abs(a - b) for a, b in checks)
        L.append(
            f"- CPU cross-check over {len(checks)} fan-out cases: schedstat and /proc/PID/stat differ by "
            f"at most {worst:.1f} ms per case (stat counts 10 ms ticks)."
        )
    L.append("")

    # -- fan-out
    fan = ordered_cases(results, "fanout")
    if fan:
        cpu = index(results, "fanout", "cpu_us_per_delivery")
        L.append("## Fan-out: server CPU µs per delivered message (median, lower is better)")
        L.append("")
        L.append("| N | case | " + " | ".join(peers) + " |")
        L.append("|---:|---|" + "---:|" * len(peers))
        for key in fan:
            L.append(
                f"| {key[0]} | {key[1]} | "
                + " | ".join(fmt(cpu.get(key, {}).get(p)) for p in peers)
                + " |"
            )
        L.append("")
        L.append("### Fan-out, all figures")
        L.append("")
        L.append(
            "| N | case | peer | CPU µs/delivery | × picows | × websockets "
            "| p50 ms | p99 ms | round ms | delivered |"
        )
        L.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---|")
        by_key = rows_by_case(results, "fanout")
        for key in fan:
            refs = cpu.get(key, {})
            for p in peers:
                r = by_key.get(key, {}).get(p)
                if r is None:
                    continue
                if "error" in r:
                    L.append(f"| {key[0]} | {key[1]} | {p} | error: {r['error']} | | | | | | |")
                    continue
                ok = "all" if r["all_delivered"] else "**MISSING**"
                L.append(
                    f"| {key[0]} | {key[1]} | {p} | {fmt(r['cpu_us_per_delivery'])} | "
                    f"{ratio(r['cpu_us_per_delivery'], refs.get('picows'))} | "
                    f"{ratio(r['cpu_us_per_delivery'], refs.get('websockets'))} | "
                    f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['round_ms'], 1)} | "
                    f"{ok} {r['received']:,}/{r['expected']:,} |"
                )
        L.append("")

    # -- request/response
    rr = ordered_cases(results, "rr")
    if rr:
        cpu = index(results, "rr", "cpu_us_per_msg")
        by_key = rows_by_case(results, "rr")
        L.append("## Request/response (JSON envelope, routed)")
        L.append("")
        L.append(
            "| case | peer | msg/s | CPU µs/msg | × picows | × websockets | server CPU use | errors |"
        )
        L.append("|---|---|---:|---:|---:|---:|---:|---|")
        for key in rr:
            for p in peers:
                r = by_key.get(key, {}).get(p)
                if r is None:
                    continue
                if "error" in r:
                    L.append(f"| {key[1]} | {p} | error: {r['error']} | | | | | |")
                    continue
                refs = cpu.get(key, {})
                errs = (
                    "none"
                    if not r["bad"] and not r["lost"]
                    else f"bad {r['bad']}, lost {r['lost']}"
                )
                L.append(
                    f"| {key[1]} | {p} | {fmt(r['msgs_per_s'], 0)} | {fmt(r['cpu_us_per_msg'])} | "
                    f"{ratio(r['cpu_us_per_msg'], refs.get('picows'))} | "
                    f"{ratio(r['cpu_us_per_msg'], refs.get('websockets'))} | "
                    f"{r['server_cpu_util'] * 100:.0f}% | {errs} |"
                )
        L.append("")

    L += static_nginx_markdown(results, opts)

    # -- static
    st = ordered_cases(results, "static")
    if st:
        cpu = index(results, "static", "cpu_us_per_req")
        by_key = rows_by_case(results, "static")
        L.append("## Static files (wrk)")
        L.append("")
        L.append("| file | peer | req/s | CPU µs/req | × picows | × websockets | note |")
        L.append("|---|---|---:|---:|---:|---:|---|")
        for key in st:
            for p in peers:
                r = by_key.get(key, {}).get(p)
                if r is None:
                    continue
                if "error" in r:
                    L.append(f"| {key[1]} | {p} | error: {r['error']} | | | | |")
                    continue
                refs = cpu.get(key, {})
                note = STATIC_NOTES.get(p, "keep-alive")
                if r.get("non_2xx"):
                    note += f"; {r['non_2xx']} non-2xx"
                if r.get("socket_errors"):
                    note += f"; socket errors: {r['socket_errors']}"
                L.append(
                    f"| {key[1]} | {p} | {fmt(r['req_per_s'], 0)} | {fmt(r['cpu_us_per_req'], 1)} | "
                    f"{ratio(r['cpu_us_per_req'], refs.get('picows'))} | "
                    f"{ratio(r['cpu_us_per_req'], refs.get('websockets'))} | {note} |"
                )
        L.append("")
    L += floor_markdown(results, opts)
    L.append("![server CPU per unit of work](results.png)")
    L.append("")
    text = "\n".join(L)
    path.write_text(text + kept_sections(path))
    return text


# Sections of RESULTS.md under this line are written by hand (figures of other
# scripts, with their commands); a run of this script rewrites what is above it.
KEEP_MARK = "<!-- Written by hand below this line: bench/run_all.py keeps it as it is. -->"


def kept_sections(path: Path) -> str:
    """What follows KEEP_MARK in the file at ``path`` (with the mark), or nothing."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    at = old.find(KEEP_MARK)
    return "" if at < 0 else "\n" + old[at:]


# ------------------------------------------------------------------ floors ---
# The per-request paths of simplew against the floor of the stack they run on,
# side by side in one run (issue 10): a routed WebSocket request/response against
# raw picows, and a REST JSON route against raw uvloop + httptools, with uvicorn +
# Starlette as the common Python reference. Servers pinned to the first CPU, the
# client (load generator, wrk) on the other.

FLOOR_WS_PEERS = ("simplew", "picows")
FLOOR_WS_CONNS = 100
FLOOR_WS_WINDOWS = (1, 32)
FLOOR_HTTP_PEERS = ("simplew", "httptools", "starlette")
FLOOR_HTTP_MODULES = {
    "simplew": "simplew",
    "httptools": "httptools",
    "starlette": "uvicorn, starlette",
}


def run_floors(opts: argparse.Namespace, log_dir: str) -> tuple[list[dict], dict]:
    """Rows of scenario ``floor_ws`` and ``floor_rest``, and the peers skipped (name → why)."""
    rows: list[dict] = []
    skipped: dict = {}
    for peer in FLOOR_HTTP_PEERS:
        proc = subprocess.run(
            [sys.executable, "-c", f"import {FLOOR_HTTP_MODULES[peer]}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            skipped[f"{peer} (floors)"] = (proc.stderr.strip().splitlines() or ["import failed"])[
                -1
            ]
    # each peer measured in turn for every case, so that load from outside the
    # benchmark hits them alike; repeats interleave the peers again
    for _rep in range(max(1, opts.repeats)):
        for window in FLOOR_WS_WINDOWS:
            for peer in FLOOR_WS_PEERS:
                rows += _floor_case(
                    peer,
                    "floor_ws",
                    f"{FLOOR_WS_CONNS} conn x{window} in flight",
                    lambda server, label, window=window: loadgen.run_rr(
                        "127.0.0.1",
                        server.port,
                        server.pid,
                        FLOOR_WS_CONNS,
                        window,
                        opts.rr_seconds,
                        procs=1,
                        label=label,
                    ),
                    opts,
                    log_dir,
                )
        for peer in FLOOR_HTTP_PEERS:
            if f"{peer} (floors)" in skipped:
                continue
            rows += _floor_case(
                peer,
                "floor_rest",
                "GET /json (a dict)",
                lambda server, label: loadgen.run_static(
                    "127.0.0.1",
                    server.port,
                    server.pid,
                    "/json",
                    opts.wrk_seconds,
                    opts.wrk_conns,
                    label=label,
                    case="GET /json",
                ),
                opts,
                log_dir,
            )
    return _floor_medians(rows), skipped


def _floor_case(
    peer: str, scenario: str, case: str, measure, opts: argparse.Namespace, log_dir: str
) -> list[dict]:
    label = f"{peer}, {scenario}"
    try:
        server = loadgen.PeerServer(peer, loadgen.free_port(), None, log_dir)
    except RuntimeError as exc:
        loadgen.progress(f"[{label}] failed: {exc}", final=True)
        return [{"scenario": scenario, "case": case, "peer": peer, "error": str(exc)}]
    try:
        if opts.pin:
            loadgen.apply_pinning(server.pid)
        row = dict(measure(server, label))
    except Exception as exc:  # noqa: BLE001 - keep the run going
        loadgen.progress(f"[{label}] failed: {exc!r}", final=True)
        row = {"error": repr(exc)}
    finally:
        server.stop()
        loadgen.unpin(None)
    row.update(scenario=scenario, case=case, peer=peer)
    return [row]


def _floor_medians(rows: list[dict]) -> list[dict]:
    """One row per (scenario, case, peer): the medians of the repeats."""
    import statistics

    groups: dict = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["case"], r["peer"]), []).append(r)
    out = []
    for runs in groups.values():
        good = [r for r in runs if "error" not in r]
        if not good:
            out.append(runs[-1])
            continue
        row = dict(good[-1])
        for metric in (
            "msgs_per_s",
            "cpu_us_per_msg",
            "server_cpu_util",
            "req_per_s",
            "cpu_us_per_req",
        ):
            if all(metric in r for r in good):
                row[metric] = statistics.median(r[metric] for r in good)
        row["repeats"] = len(good)
        out.append(row)
    return out


def floor_markdown(results: list[dict], opts: argparse.Namespace) -> list[str]:
    """The "Floors" section of RESULTS.md (empty without floor rows)."""
    ws = rows_by_case(results, "floor_ws")
    rest = rows_by_case(results, "floor_rest")
    if not ws and not rest:
        return []
    L = ["## Floors: the per-request paths against the stack they run on", ""]
    L.append(
        f"Servers pinned to the first CPU, the client on the other; {opts.repeats} run(s) per case, "
        "peers interleaved, medians. Ratios are simplew's figure over the peer's, from the same run."
    )
    L.append("")
    if ws:
        L.append(
            f"Routed WebSocket request/response: {FLOOR_WS_CONNS} connections, each with the "
            'given number of `{"url": "/ws/test/echo", "body": ...}` messages in flight '
            f"(one load-generator process, {opts.rr_seconds:g} s after a 0.5 s warm-up). simplew: "
            "envelope → Controller method → its return value sent; raw picows: json.loads + dict "
            "dispatch + `transport.send`. Goal: simplew ≤ 1.1 × picows server CPU per message."
        )
        L.append("")
        L.append(
            "| case | peer | msg/s | server CPU µs/msg | simplew ÷ peer (CPU/msg) | server CPU use |"
        )
        L.append("|---|---|---:|---:|---:|---:|")
        for key, by_peer in ws.items():
            ours = by_peer.get("simplew", {}).get("cpu_us_per_msg")
            for peer, r in by_peer.items():
                if "error" in r:
                    L.append(f"| {key[1]} | {peer} | error: {r['error']} | | | |")
                    continue
                rel = "" if peer == "simplew" else ratio(ours, r["cpu_us_per_msg"])
                L.append(
                    f"| {key[1]} | {peer} | {fmt(r['msgs_per_s'], 0)} | {fmt(r['cpu_us_per_msg'])} "
                    f"| {rel} | {r['server_cpu_util'] * 100:.0f}% |"
                )
        L.append("")
    if rest:
        L.append(
            f"REST JSON route: `wrk -t1 -c{opts.wrk_conns} -d{opts.wrk_seconds:g}s` on `GET /json`. "
            'simplew: `server.map_get("/json", lambda: {...})`; raw httptools: an asyncio '
            "protocol feeding `httptools.HttpRequestParser` and writing one pre-built response; "
            "Starlette: `JSONResponse` under uvicorn (httptools, uvloop). Goals: simplew ≥ 0.7 × "
            "httptools and ≥ 3 × Starlette in req/s."
        )
        L.append("")
        L.append(
            "| case | peer | req/s | simplew ÷ peer (req/s) | server CPU µs/req | "
            "peer ÷ simplew (CPU/req) | note |"
        )
        L.append("|---|---|---:|---:|---:|---:|---|")
        for key, by_peer in rest.items():
            ours = by_peer.get("simplew", {})
            for peer, r in by_peer.items():
                if "error" in r:
                    L.append(f"| {key[1]} | {peer} | error: {r['error']} | | | | |")
                    continue
                note = f"{r['non_2xx']} non-2xx" if r.get("non_2xx") else ""
                if peer == "simplew":
                    L.append(
                        f"| {key[1]} | {peer} | {fmt(r['req_per_s'], 0)} | | "
                        f"{fmt(r['cpu_us_per_req'], 1)} | | {note} |"
                    )
                    continue
                L.append(
                    f"| {key[1]} | {peer} | {fmt(r['req_per_s'], 0)} | "
                    f"{ratio(ours.get('req_per_s'), r['req_per_s'])} | {fmt(r['cpu_us_per_req'], 1)} | "
                    f"{ratio(r['cpu_us_per_req'], ours.get('cpu_us_per_req'))} | {note} |"
                )
        L.append("")
    return L


def write_chart(path: Path, results: list[dict], peers: list[str]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no chart: {exc}"
    panels = []
    for n in sorted({r["n"] for r in results if r["scenario"] == "fanout"}):
        rows = [r for r in results if r["scenario"] == "fanout" and r["n"] == n]
        panels.append((f"fan-out, N={n}: CPU µs per delivery", rows, "cpu_us_per_delivery"))
    for scenario, title, metric in (
        ("rr", "request/response: CPU µs per message", "cpu_us_per_msg"),
        (
            "static",
            "static files: CPU µs per request (log; picows, websockets: Connection: close)",
            "cpu_us_per_req",
        ),
    ):
        rows = [r for r in results if r["scenario"] == scenario]
        if rows:
            panels.append((title, rows, metric))
    if not panels:
        return "no chart: no results"
    cols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(7 * cols, 4 * nrows), squeeze=False)
    colors = {
        "simplew": "#d62728",
        "picows": "#1f77b4",
        "websockets": "#2ca02c",
        "aiohttp": "#9467bd",
        "socketify": "#ff7f0e",
    }
    for ax, (title, rows, metric) in zip(axes.flat, panels):
        cases = []
        for r in rows:
            if r["case"] not in cases:
                cases.append(r["case"])
        width = 0.8 / max(1, len(peers))
        for i, peer in enumerate(peers):
            values = []
            for case in cases:
                r = next((x for x in rows if x["case"] == case and x["peer"] == peer), None)
                values.append(
                    r.get(metric, float("nan")) if r and "error" not in r else float("nan")
                )
            xs = [j + (i - (len(peers) - 1) / 2) * width for j in range(len(cases))]
            ax.bar(xs, values, width, label=peer, color=colors.get(peer))
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, fontsize=8, rotation=10)
        ax.set_ylabel("µs (lower is better)")
        if metric == "cpu_us_per_req":
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("simplew vs peers: server CPU per unit of work (2-core loopback)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------- static vs nginx ---

NGINX_CASE_GOALS = {"small file (13 B)": 0.6, "100 KiB file": 0.5}  # simplew req/s ÷ nginx req/s


def nginx_available() -> tuple[bool, str]:
    if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"):
        return True, ""
    return False, "nginx is not installed (Debian package nginx)"


def run_static_vs_nginx(opts: argparse.Namespace, static_dir: str, log_dir: str) -> list[dict]:
    """simplew and nginx (bench/servers/nginx_server.py) serving the same files, both up at once
    and pinned to the server CPU; wrk alternates between them, ``opts.repeats`` runs per case."""
    servers = {}
    try:
        for peer in ("simplew", "nginx"):
            servers[peer] = loadgen.PeerServer(peer, loadgen.free_port(), static_dir, log_dir)
            if opts.pin:
                loadgen.apply_pinning(servers[peer].pid)
        rows = []
        for case, path in loadgen.STATIC_CASES:
            runs: dict[str, list[dict]] = {peer: [] for peer in servers}
            for _ in range(max(1, opts.repeats)):
                for peer, server in servers.items():
                    runs[peer].append(
                        loadgen.run_static(
                            "127.0.0.1",
                            server.port,
                            server.pid,
                            path,
                            opts.wrk_seconds,
                            opts.wrk_conns,
                            label=f"{peer} vs nginx",
                            case=case,
                        )
                    )
            for peer, results in runs.items():
                good = [r for r in results if "error" not in r]
                row = {
                    "scenario": "static_nginx",
                    "case": case,
                    "peer": peer,
                    "path": path,
                    "repeats": len(good),
                    "wrk": results[0].get("wrk"),
                }
                if not good:
                    row["error"] = results[0].get("error", "no run")
                else:
                    for key in ("req_per_s", "cpu_us_per_req", "server_cpu_util"):
                        row[key] = statistics.median(r[key] for r in good)
                    row["non_2xx"] = sum(r.get("non_2xx", 0) for r in good)
                rows.append(row)
        return rows
    finally:
        for server in servers.values():
            server.stop()


def static_nginx_markdown(results: list[dict], opts: argparse.Namespace) -> list[str]:
    """The "simplew vs nginx" section (empty when that case did not run)."""
    by_key = rows_by_case(results, "static_nginx")
    if not by_key:
        return []
    L = [
        "## Static files: simplew vs nginx (wrk, side by side)",
        "",
        f"Both servers up at once on the server CPU, `wrk -t1 -c{opts.wrk_conns} "
        f"-d{opts.wrk_seconds:g}s` alternating between them, {opts.repeats} run(s) each, medians. "
        "nginx 1.22 (Debian, bench/servers/nginx-static.conf), one process, `sendfile on`, "
        "`tcp_nopush on`, `open_file_cache`, no access log; simplew "
        "`add_static_content(..., timeout=86400)`.",
        "",
        '"CPU ratio" = nginx CPU µs/req ÷ simplew CPU µs/req: the req/s ratio to expect when the '
        "server CPU is the bottleneck (on a shared machine wrk may be the bottleneck instead).",
        "",
        "| file | simplew req/s | nginx req/s | simplew ÷ nginx | goal | simplew CPU µs/req "
        "| nginx CPU µs/req | CPU ratio | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (_, case), peers in by_key.items():
        sw, ng = peers.get("simplew", {}), peers.get("nginx", {})
        notes = [f"{p}: {r['error']}" for p, r in peers.items() if "error" in r]
        notes += [f"{p}: {r['non_2xx']} non-2xx" for p, r in peers.items() if r.get("non_2xx")]
        L.append(
            f"| {case} | {fmt(sw.get('req_per_s'), 0)} | {fmt(ng.get('req_per_s'), 0)} | "
            f"{ratio(sw.get('req_per_s'), ng.get('req_per_s'))} | "
            f"≥ {NGINX_CASE_GOALS.get(case, 0):.1f}× | {fmt(sw.get('cpu_us_per_req'), 1)} | "
            f"{fmt(ng.get('cpu_us_per_req'), 1)} | "
            f"{ratio(ng.get('cpu_us_per_req'), sw.get('cpu_us_per_req'))} | {'; '.join(notes)} |"
        )
    L.append("")
    return L


# --------------------------------------------------------------------- main ---


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--peers",
        default=",".join(loadgen.PEERS),
        help="comma list of peers to measure (unavailable ones are skipped and noted)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="N=1000, 5 rounds, 1 warm-up, one 2 s request/response and wrk run "
        "per case (options given explicitly still win)",
    )
    parser.add_argument("--out", default=str(BENCH_DIR / "RESULTS.md"))
    parser.add_argument("--chart", default=str(BENCH_DIR / "results.png"))
    parser.add_argument("--json", default=str(BENCH_DIR / "results.json"))
    parser.add_argument(
        "--no-floors",
        dest="floors",
        action="store_false",
        help="skip the floor comparisons (routed WebSocket vs raw picows, REST "
        "vs raw httptools and uvicorn + Starlette); they run by default, and "
        "with --scenarios only when it names 'floors'",
    )
    loadgen.add_common_options(parser)
    parser.add_argument(
        "--no-nginx",
        dest="nginx",
        action="store_false",
        help="skip the static-file comparison with nginx",
    )
    opts = parser.parse_args(argv)
    named = any(
        a.split("=")[0] == "--scenarios" for a in (argv if argv is not None else sys.argv[1:])
    )
    opts.floors = opts.floors and ("floors" in opts.scenarios or not named)
    if opts.quick:
        given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        if "--n" not in given:
            opts.n = [1000]
        if "--rounds" not in given:
            opts.rounds = 5
        if "--warmup" not in given:
            opts.warmup = 1
        if "--rr-seconds" not in given:
            opts.rr_seconds = 2.0
        if "--wrk-seconds" not in given:
            opts.wrk_seconds = 2.0
        if "--repeats" not in given:
            opts.repeats = 1
    loadgen.install_signal_handlers()
    command = "python " + shlex.join([os.path.relpath(sys.argv[0], os.getcwd())] + sys.argv[1:])
    started = time.monotonic()
    info = machine_info()
    peers, skipped = [], {}
    for peer in [p.strip() for p in opts.peers.split(",") if p.strip()]:
        if peer not in loadgen.PEERS:
            parser.error(f"unknown peer {peer!r}; known: {', '.join(loadgen.PEERS)}")
        ok, why = loadgen.peer_available(peer)
        if ok:
            peers.append(peer)
        else:
            skipped[peer] = why
            loadgen.progress(f"[{peer}] skipped: {why}", final=True)
    layout = loadgen.cpu_layout() if opts.pin else None
    pinning = (
        f"server on CPU {sorted(layout[0])}, load generator and wrk on CPU {sorted(layout[1])}"
        if layout
        else "none"
    )
    if layout and not opts.rr_pin:
        pinning += " (request/response unpinned: the Python client needs more than one CPU)"
    info["loadavg_start"] = loadavg()
    static_dir = loadgen.make_static_dir()
    log_dir = tempfile.mkdtemp(prefix="simplew-bench-logs-")
    results: list[dict] = []
    try:
        if opts.nginx and "static" in opts.scenarios:
            ok, why = nginx_available()
            if ok:
                try:
                    results += run_static_vs_nginx(opts, static_dir, log_dir)
                except RuntimeError as exc:  # a server did not start
                    skipped["nginx"] = str(exc)
                    loadgen.progress(f"[nginx] failed: {exc}", final=True)
            else:
                skipped["nginx"] = why
        for peer in peers:
            try:
                results += loadgen.run_peer(peer, opts, static_dir, log_dir)
            except RuntimeError as exc:  # the server did not start
                skipped[peer] = str(exc)
                loadgen.progress(f"[{peer}] failed: {exc}", final=True)
        if opts.floors:
            floor_rows, floor_skipped = run_floors(opts, log_dir)
            results += floor_rows
            skipped.update(floor_skipped)
    finally:
        loadgen.stop_all_servers()
        shutil.rmtree(static_dir, ignore_errors=True)
    measured = [p for p in peers if any(r["peer"] == p for r in results)]
    elapsed = time.monotonic() - started
    info["loadavg_end"] = loadavg()
    with open(opts.json, "w") as f:
        json.dump(
            {
                "machine": info,
                "command": command,
                "pinning": pinning,
                "results": results,
                "skipped": skipped,
            },
            f,
            indent=1,
        )
    text = write_markdown(
        Path(opts.out), results, measured, skipped, info, opts, command, pinning, elapsed
    )
    problem = write_chart(Path(opts.chart), results, measured)
    if problem:
        loadgen.progress(problem, final=True)
    loadgen.progress(
        f"wrote {opts.out}, {opts.chart}, {opts.json}; server logs in {log_dir}; {elapsed:.0f} s",
        final=True,
    )
    start = text.find("## Fan-out")
    print(text[start:] if start >= 0 else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
