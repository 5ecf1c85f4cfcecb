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
