"""The benchmark's split of an execution's latency into stretches (bench.timeline)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from bench.stats import steady_window
from bench.timeline import STRETCHES, summarize


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _execution(slot: int, sent: float, marks_ms: list[float]) -> tuple[dict[str, Any], dict]:
    """A detail and a row whose stretches take `marks_ms` (one per stretch) from `sent`."""
    eid = f"00000000-0000-0000-0000-{slot:04d}{int(sent * 1000):08d}"
    times = [sent]
    for ms in marks_ms:
        times.append(times[-1] + ms / 1000)
    detail = {
        "execution_id": eid,
        "slot": slot,
        "sent_wall": sent,
        "answered_wall": times[-1],
    }
    row = {
        "id": eid,
        "created_at": _at(times[1]),
        "started_at": _at(times[2]),
        "step1_at": _at(times[3]),
        "step2_at": _at(times[4]),
        "completed_at": _at(times[5]),
    }
    return detail, row


def test_the_stretches_add_up_to_the_latency_and_only_the_steady_state_counts() -> None:
    steady = [1.0, 2.0, 3.0, 200.0, 4.0, 5.0]
    ramp = [9.0, 9.0, 9.0, 400.0, 9.0, 9.0]  # the first round: slower, outside the window
    details, rows = [], []
    for slot in range(2):
        sent = 100.0 + 0.05 * slot  # the second client a little behind the first
        for i in range(5):
            detail, row = _execution(slot, sent, ramp if i == 0 else steady)
            details.append(detail)
            rows.append(row)
            sent = detail["answered_wall"]
    # The window runs from the second client's first answer to the first client's last:
    # the first client's executions 2-4 and the second's 1-3 fall inside it.
    del rows[-2]  # one the database did not return (say, it took a third step): skipped
    summary = summarize(details, rows)
    assert summary["executions"] == 5
    for (name, _), ms in zip(STRETCHES, steady, strict=True):
        assert summary["mean_ms"][name] == pytest.approx(ms, abs=0.01)
        assert summary["p50_ms"][name] == pytest.approx(ms, abs=0.01)
    assert summary["mean_ms"]["total"] == pytest.approx(sum(steady), abs=0.01)


def test_no_matching_executions_summarize_to_none() -> None:
    detail, _ = _execution(0, 100.0, [1, 1, 1, 1, 1, 1])
    assert summarize([detail], []) == {"executions": 0}


def test_steady_window_is_between_the_last_first_and_the_first_last_completion() -> None:
    assert steady_window([[1.0, 2.0, 3.0], [1.5, 2.5, 4.0]]) == (1.5, 3.0)
    assert steady_window([[1.0], [2.0, 3.0]]) is None
    assert steady_window([[1.0, 5.0], [6.0, 7.0]]) is None  # nobody overlapped
