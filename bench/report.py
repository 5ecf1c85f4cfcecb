"""The targets, how each is read from the results, and the table (text and markdown).

A target whose scenario did not run (e.g. in `--quick`, or left out with `--scenarios`) is
shown as `n/a`, never as a pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import timeline

Results = dict[str, Any]


@dataclass(frozen=True)
class Target:
    name: str
    bound: str  # as written in the targets table
    limit: float
    higher_is_better: bool
    unit: str
    read: Callable[[Results], float | None]
    note: Callable[[Results], str | None] | None = None  # appended to the verdict

    def evaluate(self, results: Results) -> dict[str, Any]:
        try:
            value = self.read(results)
        except (KeyError, TypeError, IndexError):
            value = None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return {"target": self.name, "bound": self.bound, "measured": None, "verdict": "n/a"}
        ok = value >= self.limit if self.higher_is_better else value <= self.limit
        if ok:
            verdict = "PASS"
        elif self.higher_is_better:
            verdict = f"MISS ({value / self.limit:.0%} of target)"
        else:
            verdict = f"MISS ({value / self.limit:.1f}x the bound)"
        try:
            note = self.note(results) if self.note else None
        except (KeyError, TypeError):
            note = None
        if note:
            verdict += f"; {note}"
        return {
            "target": self.name,
            "bound": self.bound,
            "measured": round(value, 2),
            "unit": self.unit,
            "verdict": verdict,
        }


def _scenario(key: str, field: str) -> Callable[[Results], float | None]:
    return lambda r: r["scenarios"][key][field]


def _steady(key: str) -> Callable[[Results], str | None]:
    """The same run's throughput while every client had an execution in flight."""

    def read(r: Results) -> str | None:
        steady = r["scenarios"][key].get("steady")
        return f"steady state {steady['throughput']:g} /s" if steady else None

    return read


def _nested(*path: str) -> Callable[[Results], float | None]:
    def read(r: Results) -> float | None:
        value: Any = r
        for part in path:
            value = value[part]
        return value

    return read


TARGETS = [
    Target(
        "c=1, 0 ms provider: end-to-end latency p50",
        "≤ 20 ms",
        20,
        False,
        "ms",
        _scenario("server/wait/c1/0ms", "p50_ms"),
    ),
    Target(
        "c=8, 0 ms provider: throughput",
        "≥ 100 /s",
        100,
        True,
        "/s",
        _scenario("server/wait/c8/0ms", "throughput"),
        _steady("server/wait/c8/0ms"),
    ),
    Target(
        "c=16, 200 ms provider: throughput",
        "≥ 38 /s",
        38,
        True,
        "/s",
        _scenario("server/wait/c16/200ms", "throughput"),
        _steady("server/wait/c16/200ms"),
    ),
    Target(
        "c=16, 200 ms provider: latency p50",
        "≤ 450 ms",
        450,
        False,
        "ms",
        _scenario("server/wait/c16/200ms", "p50_ms"),
    ),
    Target(
        "c=64, 200 ms provider: throughput",
        "≥ 130 /s",
        130,
        True,
        "/s",
        _scenario("server/wait/c64/200ms", "throughput"),
        _steady("server/wait/c64/200ms"),
    ),
    Target(
        "sandbox start (pool/zygote), p50",
        "≤ 5 ms",
        5,
        False,
        "ms",
        _nested("sandbox", "spawn_p50_ms"),
    ),
    Target(
        "sandbox start (pool/zygote), p99",
        "≤ 20 ms",
        20,
        False,
        "ms",
        _nested("sandbox", "spawn_p99_ms"),
    ),
    Target(
        "api process RSS after the executions of the memory runs",
        "≤ 300 MB",
        300,
        False,
        "MB",
        _nested("memory", "api_rss_after_run2_mb"),
        lambda r: f"{r['memory']['executions_per_run']:,} executions per run",
    ),
    Target(
        "api RSS growth between two equal runs",
        "≤ 2 % (not growing)",
        2,
        False,
        "%",
        _nested("memory", "api_rss_growth_pct"),
    ),
    Target(
        "per running execution, extra memory (PSS)",
        "≤ 20 MB",
        20,
        False,
        "MB",
        _nested("pss", "per_execution_mb"),
    ),
    Target(
        "GET execution, 500 req/s open loop: p99",
        "≤ 10 ms",
        10,
        False,
        "ms",
        _nested("datascale", "by_kind", "get_execution", "p99_ms"),
    ),
    Target(
        "GET executions?limit=50, same run: p99",
        "≤ 10 ms",
        10,
        False,
        "ms",
        _nested("datascale", "by_kind", "list_executions", "p99_ms"),
    ),
    Target(
        "stream: first `step` event after the provider answers, p50",
        "≤ 10 ms",
        10,
        False,
        "ms",
        _nested("stream_first_step", "p50_ms"),
    ),
]


def evaluate(results: Results) -> list[dict[str, Any]]:
    return [t.evaluate(results) for t in TARGETS]


def _fmt(row: dict[str, Any]) -> str:
    if row["measured"] is None:
        return "—"
    return f"{row['measured']:g} {row['unit']}"


def text_table(rows: list[dict[str, Any]]) -> str:
    widths = [max(len(r["target"]) for r in rows), 20, 14]
    lines = [
        f"{'target':<{widths[0]}}  {'bound':<{widths[1]}}  {'measured':<{widths[2]}}  verdict",
        "-" * (sum(widths) + 16),
    ]
    for r in rows:
        lines.append(
            f"{r['target']:<{widths[0]}}  {r['bound']:<{widths[1]}}  "
            f"{_fmt(r):<{widths[2]}}  {r['verdict']}"
        )
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    out = ["| target | bound | measured | verdict |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['target']} | {r['bound']} | {_fmt(r)} | {r['verdict']} |")
    return "\n".join(out)


def scenario_table(scenarios: dict[str, dict[str, Any]]) -> str:
    """Markdown: every closed-loop scenario with its baselines and resources."""
    out = [
        "| scenario | c | n | throughput /s (steady state) | p50 ms | p95 ms | p99 ms | errors "
        "| vs ideal | vs raw smolagents | peak RSS api / worker (+sandbox) MB "
        "| CPU ms per execution | machine: others' load, hypervisor's steal, speed probe (ms; "
        "lower is faster) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in scenarios.items():
        if "throughput" not in s or s.get("warmup"):
            continue
        rss = s.get("rss_peak_mb", {})
        rss_text = (
            f"{rss.get('api', '—')} / {rss.get('worker', '—')} ({rss.get('worker_tree', '—')})"
            if rss
            else "—"
        )
        steady = s.get("steady")
        throughput = f"{s['throughput']}" + (f" ({steady['throughput']})" if steady else "")
        out.append(
            f"| {key} | {s['c']} | {s['n']} | {throughput} | {s['p50_ms']} | {s['p95_ms']} "
            f"| {s['p99_ms']} | {s['errors']} | {_ratio(s.get('vs_ideal'))} "
            f"| {_ratio(s.get('vs_raw_smolagents'))} | {rss_text} | {_cpu(s)} "
            f"| {s.get('machine_noise_pct', '—')} %, {s.get('machine_steal_pct', '—')} %, "
            f"{s.get('cpu_probe_ms', '—')} |"
        )
    return "\n".join(out)


def timeline_table(scenarios: dict[str, dict[str, Any]]) -> str:
    """Markdown: where the executions of each waiting server-mode scenario spent their time
    (steady state, mean and p50 in ms), one column per scenario; empty without any."""
    measured = {
        key: s["timeline"]
        for key, s in scenarios.items()
        if s.get("timeline", {}).get("executions")
    }
    if not measured:
        return ""
    out = [
        "| stretch (steady state; mean / p50 ms) | "
        + " | ".join(f"{key} (n={t['executions']})" for key, t in measured.items())
        + " |",
        "|---" * (len(measured) + 1) + "|",
    ]
    labels = dict(timeline.STRETCHES) | {"total": "end to end"}
    for name, label in labels.items():
        cells = [f"{t['mean_ms'][name]} / {t['p50_ms'][name]}" for t in measured.values()]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _cpu(s: dict[str, Any]) -> str:
    """Where the CPU went per execution, largest first (the machine total excluded)."""
    cpu = s.get("cpu_ms_per_execution")
    if not cpu:
        return "—"
    parts = sorted(
        ((k, v) for k, v in cpu.items() if k not in ("machine", "other") and v >= 0.5),
        key=lambda kv: -kv[1],
    )
    return ", ".join(f"{k} {v:g}" for k, v in parts) + f" (total {cpu.get('machine', 0):g})"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def details(results: Results) -> str:
    """Markdown bullets with the numbers behind the memory, sandbox, stream, read-path and
    profile rows (what the targets table summarises in one cell)."""
    out: list[str] = []
    sandbox = results.get("sandbox")
    if sandbox:
        conc = ", ".join(
            f"{k}: p50 {v['p50_ms']} / p99 {v['p99_ms']} ms"
            for k, v in sandbox["concurrent_spawn"].items()
        )
        out.append(
            f"- sandbox ({sandbox['isolation_level']}): spawn one at a time p50 "
            f"{sandbox['spawn_p50_ms']} / p99 {sandbox['spawn_p99_ms']} ms (n={sandbox['n']}); "
            f"back-to-back from threads: {conc}"
        )
    memory = results.get("memory")
    if memory:
        out.append(
            f"- api RSS: {memory['api_rss_after_run1_mb']} MB after run 1, "
            f"{memory['api_rss_after_run2_mb']} MB after run 2 ({memory['executions_per_run']} "
            f"executions each at c={memory['c']}; {memory['executions_served_by_api_total']} "
            f"served by that api process in total); worker RSS {memory['worker_rss_mb']} MB"
        )
    pss = results.get("pss")
    if pss:
        out.append(
            f"- PSS of worker + zygote + children: {pss['worker_tree_pss_idle_mb']} MB idle "
            f"({pss['processes_idle']} processes), {pss['worker_tree_pss_busy_mb']} MB with "
            f"{pss['running_when_measured']} executions running ({pss['processes_busy']} "
            f"processes) → {pss['per_execution_mb']} MB each"
        )
    stream = results.get("stream_first_step")
    if stream:
        out.append(
            f"- stream: first `step` event {stream['p50_ms']} ms (p50) / {stream['p95_ms']} ms "
            f"(p95) / {stream['p99_ms']} ms (p99) after the provider answered (n={stream['n']})"
        )
    for key in ("datascale", "datascale/1api"):
        d = results.get(key)
        if not d:
            continue
        load = d.get("load", {})
        gc = d.get("gc_pauses_over_20ms")
        out.append(
            f"- read path, {d['api_processes']} api process(es), {load.get('rows')} executions "
            f"({load.get('steps_rows')} steps, {load.get('size_mb')} MB), {d['rate']:g} req/s: "
            f"p50 {d['p50_ms']} / p95 {d['p95_ms']} / p99 {d['p99_ms']} ms; slowest request "
            f"per second {d.get('worst_ms_per_second')}; CPU {d.get('cpu_s')}"
            + (f"; GC pauses > 20 ms {gc}" if gc else "")
        )
    prof = results.get("profile") or {}
    for name in ("api", "worker"):
        part = prof.get(name)
        if part and part.get("samples"):
            pkgs = ", ".join(f"{x['frame']} {x['pct']}%" for x in part["self_by_package"][:8])
            fns = "; ".join(f"{x['frame']} {x['pct']}%" for x in part["self_top_functions"][:6])
            out.append(f"- profile {name} (GIL samples {part['samples']}): {pkgs}. Top: {fns}")
    return "\n".join(out)
