"""Latency summaries shared by every scenario, so all numbers are computed the same way."""

from __future__ import annotations

import time
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the same definition as bench/sandbox_start.py)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in ms, rounded for printing."""
    return {
        "p50_ms": round(percentile(latencies_ms, 50), 2),
        "p95_ms": round(percentile(latencies_ms, 95), 2),
        "p99_ms": round(percentile(latencies_ms, 99), 2),
        "max_ms": round(max(latencies_ms), 2) if latencies_ms else float("nan"),
    }


def steady_window(completions: Sequence[Sequence[float]]) -> tuple[float, float] | None:
    """(start, end): from the moment the last client finished its first execution until the
    first client finished its last one; None when some client finished fewer than two."""
    if not completions or any(len(times) < 2 for times in completions):
        return None
    start = max(times[0] for times in completions)
    end = min(times[-1] for times in completions)
    return (start, end) if end > start else None


def steady_throughput(
    executions: Sequence[Sequence[tuple[float, float]]],
) -> dict[str, float] | None:
    """Executions per second while every client had one in flight: from the moment the last
    client finished its first execution until the first client finished its last one.

    `executions` holds each client's (sent, answered) times (seconds, one clock). A closed
    loop starts all its clients at the same instant, so the first rounds run in lockstep (all
    executions waiting on the provider together, then all wanting the CPU together), and at
    the end fewer than `c` executions are in flight; the whole run's figure includes both.

    Each execution counts by the share of its duration that lies inside the window, not by
    whether it ended there. The window's ends are themselves answers, the latest first one
    and the earliest last one, and clients that move in step are answered just after the
    end: counting whole answers would miss up to one execution per client (up to 2.6 % at
    c=64 over 20 rounds). None when the window holds too few answers to mean anything."""
    window = steady_window([[answered for _, answered in runs] for runs in executions])
    if window is None:
        return None
    start, end = window
    answered = sum(1 for runs in executions for _, t in runs if start < t <= end)
    if answered < 4 * len(executions):
        return None
    share = 0.0
    for runs in executions:
        for sent, done in runs:
            inside = min(done, end) - max(sent, start)
            if inside > 0:
                share += inside / (done - sent)
    return {"throughput": round(share / (end - start), 2), "window_s": round(end - start, 3)}


def cpu_probe_ms(rounds: int = 5) -> float:
    """The fastest of `rounds` runs of a fixed pure-Python workload, in ms: the machine's
    speed at that moment. A 2-core cloud machine's speed drifts during a run, and the same
    code then measures a different throughput; this tells which."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i % 7
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 2)
