"""The benchmark's own arithmetic: a wrong figure here would mislead every run."""

from __future__ import annotations

from bench.stats import percentile, steady_throughput


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 51  # round(0.5 * 99) = 50 -> the 51st value
    assert percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7.0


def _back_to_back(first_sent: float, cycle_s: float, count: int) -> list[tuple[float, float]]:
    """One closed-loop client: each execution sent when the previous one was answered."""
    return [(first_sent + cycle_s * i, first_sent + cycle_s * (i + 1)) for i in range(count)]


def test_steady_throughput_counts_only_while_every_client_was_busy() -> None:
    # two clients: one answered every 0.1 s until t=4.0, the other every 0.2 s from t=1.5
    fast = _back_to_back(0.9, 0.1, 31)  # answered 1.0 .. 4.0
    slow = _back_to_back(1.3, 0.2, 16)  # answered 1.5 .. 4.5
    steady = steady_throughput([fast, slow])
    assert steady is not None
    assert steady["window_s"] == 2.5  # (1.5, 4.0]: the slow one's first, the fast one's last
    assert steady["throughput"] == 15.0  # 10/s + 5/s


def test_steady_throughput_is_not_biased_by_clients_moving_in_step() -> None:
    # 8 clients in lockstep, 0.5 s per execution, each answered 1 ms after the one before:
    # the window ends at client 0's last answer, and every other client is answered just
    # after it, so counting whole answers inside the window misses nearly one per client
    clients = [_back_to_back(0.001 * i, 0.5, 20) for i in range(8)]
    steady = steady_throughput(clients)
    assert steady is not None
    start, end = 0.5 + 0.007, 10.0
    assert steady["window_s"] == round(end - start, 3)
    assert steady["throughput"] == 16.0  # 8 clients / 0.5 s
    whole_answers = sum(1 for runs in clients for _, t in runs if start < t <= end)
    assert whole_answers / (end - start) < 15.3  # what counting answers would have said


def test_steady_throughput_needs_a_window_with_enough_completions() -> None:
    assert steady_throughput([]) is None
    assert steady_throughput([[(0.0, 1.0)], [(0.0, 2.0), (2.0, 3.0)]]) is None  # one execution
    two_each = [[(0.9, 1.0), (1.0, 1.1)], [(0.95, 1.05), (1.05, 1.2)]]
    assert steady_throughput(two_each) is None  # 2 answers in the window for 2 clients
