"""The benchmark's own arithmetic: a wrong figure here would mislead every run."""

from __future__ import annotations

from bench.stats import percentile, steady_throughput


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 51  # round(0.5 * 99) = 50 -> the 51st value
    assert percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7.0


def test_steady_throughput_counts_only_while_every_client_was_busy() -> None:
    # two clients: one every 0.1 s from t=1.0, the other every 0.2 s from t=1.5; the second
    # finishes its first at 1.5 and the first its last at 4.0
    fast = [1.0 + 0.1 * i for i in range(31)]  # 1.0 .. 4.0
    slow = [1.5 + 0.2 * i for i in range(16)]  # 1.5 .. 4.5
    steady = steady_throughput([fast, slow])
    assert steady is not None
    assert steady["window_s"] == 2.5  # (1.5, 4.0]
    in_window = sum(1 for t in fast + slow if 1.5 < t <= 4.0 + 1e-9)
    assert steady["throughput"] == round(in_window / 2.5, 2)
    assert 14.5 < steady["throughput"] <= 15  # 10/s + 5/s, less the edges


def test_steady_throughput_needs_a_window_with_enough_completions() -> None:
    assert steady_throughput([]) is None
    assert steady_throughput([[1.0], [2.0, 3.0]]) is None  # a client with one execution
    assert steady_throughput([[1.0, 1.1], [1.05, 1.2]]) is None  # 2 completions for 2 clients
