"""Measure the platform and print the targets table.

    .venv/bin/python bench/run.py [--quick] [--scenarios server,stream,...]

Prints one JSON line per scenario, then the targets table (target vs measured, PASS/MISS), and
writes bench/results/latest.json and latest.md. Exits non-zero only when something failed
(an execution, an HTTP request, a scenario that could not run), never because of a timing:
timings on a shared 2-core machine are information, not a test.

Everything runs on loopback: a fake Anthropic provider (tests/fakes/llm_server.py, its own
process), PostgreSQL and Redis of this machine (own `bench_*` databases and Redis namespace,
removed afterwards), the platform's own `agent-platform` processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

if __package__ in (None, ""):  # run as a script: make `bench` and `tests.fakes` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.infra import pg_database, redis_namespace, run_id, server_versions, wake_up_costs
from bench.plan import ALL_GROUPS, FULL, QUICK, QUICK_GROUPS, Topology, plan_dict
from bench.scenarios import Bench

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
# The libraries on the measured paths, whose releases move the figures.
MEASURED_PACKAGES = (
    "smolagents",
    "anthropic",
    "openai",
    "aiohttp",
    "fastapi",
    "starlette",
    "pydantic",
    "uvicorn",
    "uvloop",
    "sqlalchemy",
    "asyncpg",
    "redis",
    "orjson",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smoke run (< 60 s), tiny N")
    p.add_argument(
        "--scenarios",
        default="",
        help=f"comma-separated groups to run (default: all; --quick: {','.join(QUICK_GROUPS)}); "
        f"groups: {','.join(ALL_GROUPS)}",
    )
    p.add_argument("--api-procs", type=int, default=1, help="server-mode api processes")
    p.add_argument("--worker-procs", type=int, default=1, help="server-mode worker processes")
    p.add_argument(
        "--slots", type=int, default=0, help="WORKER_CONCURRENCY per worker (default: 64 total)"
    )
    p.add_argument("--prefork", type=int, default=4, help="SANDBOX_PREFORK per worker")
    p.add_argument(
        "--read-api-procs", type=int, default=2, help="api processes of the data-scale scenario"
    )
    p.add_argument("--rows", type=int, default=0, help="data-scale rows (default 1M / 2,000)")
    p.add_argument("--memory-n", type=int, default=0, help="executions per memory run")
    p.add_argument(
        "--gc-trace",
        action="store_true",
        help="run the platform's processes through bench.gctrace and report GC pauses",
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        type=header,
        metavar="'NAME: VALUE'",
        help="a header every request of the load generators carries (an API key, say); repeatable",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="where latest.json/.md go")
    return p.parse_args(argv)


def header(text: str) -> tuple[str, str]:
    """`--header 'Authorization: Bearer …'` → (name, value)."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected 'NAME: VALUE', got {text!r}")
    return name.strip(), value.strip()


def _interrupt(signum: int, frame: Any) -> NoReturn:
    """SIGTERM/SIGHUP behave like Ctrl-C: unwind, so every `finally` stops what it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    # Ctrl-C must unwind even when started from a shell that ignores SIGINT (background jobs)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    plan = QUICK if args.quick else FULL
    if args.rows or args.memory_n:
        plan = replace(plan, rows=args.rows or plan.rows, memory_n=args.memory_n or plan.memory_n)
    groups = (
        set(args.scenarios.split(","))
        if args.scenarios
        else set(QUICK_GROUPS if args.quick else ALL_GROUPS)
    )
    unknown = groups - set(ALL_GROUPS)
    if unknown:
        print(f"unknown scenario groups: {sorted(unknown)}", file=sys.stderr)
        return 2
    slots = args.slots or -(-64 // args.worker_procs)
    topology = Topology(
        args.api_procs, args.worker_procs, slots, args.prefork, args.read_api_procs, args.gc_trace
    )
    rid = run_id()
    started = time.time()
    wake_ups = wake_up_costs(plan.wake_up_samples)  # first, on a machine the run leaves idle
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
        pg_database(f"bench_{rid}") as database,
        redis_namespace(f"bench_{rid}") as namespace,
    ):
        bench = Bench(
            plan, topology, groups, Path(tmp), database, namespace, headers=dict(args.header)
        )
        print(
            f"# bench run {rid}: {'quick' if plan.quick else 'full'}; groups "
            f"{','.join(g for g in ALL_GROUPS if g in groups)}; server mode: "
            f"{topology.api_procs} api process(es), {topology.worker_procs} worker process(es) "
            f"x {topology.slots} slots, prefork {topology.prefork}; {os.cpu_count()} CPUs",
            flush=True,
        )
        try:
            if "sandbox" in groups:
                bench.sandbox()
            bench.phase_fast()
            if "latency200" in groups:
                bench.phase_200ms()
            if "pss" in groups:
                bench.phase_pss()
            if "datascale" in groups:
                with (
                    bench.guard("datascale"),
                    pg_database(f"bench_{rid}_scale") as scale_db,
                ):
                    bench.phase_datascale(scale_db)
        finally:
            bench.close()
            keep_logs(Path(tmp) / "logs", args.out / "logs")
            keep_logs(Path(tmp) / "profile", args.out / "profile")
    results = bench.results
    results["run"] = {
        "id": rid,
        "quick": plan.quick,
        "groups": sorted(groups),
        "duration_s": round(time.time() - started, 1),
        "cpus": os.cpu_count(),
        "topology": {
            "api_processes": topology.api_procs,
            "worker_processes": topology.worker_procs,
            "slots_per_worker": topology.slots,
            "sandbox_prefork": topology.prefork,
            "read_path_api_processes": topology.read_api_procs,
            "gc_trace": topology.gc_trace,
            "load_balancing": "none: load-generator slots spread round-robin over api ports",
        },
        "plan": plan_dict(plan),
    }
    results["source"] = source_state() | {"software": software_state()}
    results["wake_ups"] = wake_ups
    results["targets"] = report.evaluate(results)
    errors = sum(int(s.get("errors", 0) or 0) for s in results["scenarios"].values())
    results["errors"] = errors
    write_outputs(results, args.out)
    print()
    print(report.scenario_table(results["scenarios"]))
    print()
    if where := report.timeline_table(results["scenarios"]):
        print(where, end="\n\n")
    print(report.text_table(results["targets"]))
    print(summary_lines(results))
    print(f"\nresults: {args.out / 'latest.json'}, {args.out / 'latest.md'}; errors: {errors}")
    return 1 if errors else 0


def summary_lines(results: dict[str, Any]) -> str:
    """Process layout and the profile's top items, under the table."""
    run = results["run"]
    topo = run["topology"]
    lines = [
        f"\nserver mode: {topo['api_processes']} api process(es), {topo['worker_processes']} "
        f"worker process(es) x {topo['slots_per_worker']} slots (prefork "
        f"{topo['sandbox_prefork']}); read path: {topo['read_path_api_processes']} api "
        f"process(es); {topo['load_balancing']}; {run['duration_s']} s"
    ]
    src = results.get("source", {})
    lines.append(
        f"measured commit {str(src.get('commit', '?'))[:10]}"
        + (
            f" + uncommitted changes in {', '.join(src['src_changed_in_working_tree'])}"
            if src.get("src_changed_in_working_tree")
            else " (clean src/)"
        )
    )
    lines.append(f"software: {software_line(src.get('software', {}))}")
    lines.append(f"round trips: {wake_ups_line(results.get('wake_ups', {}))}")
    for field, bound, who in (
        ("machine_noise_pct", 10, "other programs used >10 % of the machine"),
        ("machine_steal_pct", 5, "the hypervisor took >5 % of the cores"),
    ):
        over = [
            f"{key} ({s[field]} %)"
            for key, s in results["scenarios"].items()
            if (s.get(field) or 0) > bound
        ]
        if over:
            lines.append(f"{who} during: " + ", ".join(over))
    prof = results.get("profile") or {}
    for name in ("api", "worker"):
        part = prof.get(name)
        if not part or not part.get("samples"):
            continue
        pkgs = ", ".join(f"{x['frame']} {x['pct']}%" for x in part["self_by_package"][:8])
        fns = ", ".join(f"{x['frame']} {x['pct']}%" for x in part["self_top_functions"][:6])
        lines.append(f"profile {name} (GIL-holding samples: {part['samples']}): {pkgs}")
        lines.append(f"  top functions: {fns}")
    return "\n".join(lines)


def source_state() -> dict[str, Any]:
    """Which code was measured: the commit, and src/ files changed on top of it (others may
    be editing the working tree while the benchmark runs). Read-only git commands."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.rstrip("\n")  # not strip(): a status line starts with a space

    changed = [ln[3:] for ln in git("status", "--porcelain", "--", "src").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "src_changed_in_working_tree": changed}


def software_state() -> dict[str, Any]:
    """The versions the figures depend on besides the commit: an install resolves the newest
    releases within pyproject's ranges, so two runs of one commit may not run the same code."""

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        **server_versions(),
        "packages": {name: version(name) for name in MEASURED_PACKAGES},
    }


def software_line(software: dict[str, Any]) -> str:
    if not software:
        return "?"
    packages = ", ".join(f"{k} {v}" for k, v in software["packages"].items())
    return (
        f"Python {software['python']}, Linux {software['kernel']}, PostgreSQL "
        f"{software['postgresql']}, Redis {software['redis']}; {packages}"
    )


def wake_ups_line(wake_ups: dict[str, Any]) -> str:
    """'postgresql 0.12 ms back to back, 0.36 ms after 200 ms idle; redis ...'."""
    if not wake_ups:
        return "?"
    idle = f"after {wake_ups['idle_s'] * 1000:g} ms idle"
    return "; ".join(
        f"{server} {t['busy']} ms back to back, {t['after_idle']} ms {idle}"
        for server, t in wake_ups["p50_ms"].items()
    )


def keep_logs(src: Path, dest: Path) -> None:
    """Logs and raw profiles outlive the temporary run directory (for post-mortems)."""
    shutil.rmtree(dest, ignore_errors=True)
    if src.is_dir():
        shutil.copytree(src, dest)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    src = results.get("source", {})
    dirty = src.get("src_changed_in_working_tree")
    md = [
        f"Run `{results['run']['id']}` ({'quick' if results['run']['quick'] else 'full'}), "
        f"{results['run']['cpus']} CPUs, {results['run']['duration_s']} s, commit "
        f"`{str(src.get('commit', '?'))[:10]}`"
        + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")
        + f". {results.get('topology', '')}",
        "",
        f"Software: {software_line(src.get('software', {}))}.",
        "",
        f"Round trips (p50): {wake_ups_line(results.get('wake_ups', {}))}.",
        "",
        report.markdown_table(results["targets"]),
        "",
        report.scenario_table(results["scenarios"]),
        "",
        report.timeline_table(results["scenarios"]),
        "",
        report.details(results),
        "",
    ]
    (out / "latest.md").write_text("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
