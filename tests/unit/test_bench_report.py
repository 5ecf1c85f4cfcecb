"""The benchmark's verdicts: a target is a PASS only when its figure was measured and meets it."""

from __future__ import annotations

from typing import Any

from bench import report


def _verdicts(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["target"]: row for row in report.evaluate(results)}


C16 = "c=16, 200 ms provider: throughput"
C1 = "c=1, 0 ms provider: end-to-end latency p50"


def _c16_c1(throughput: float, p50_ms: float) -> dict[str, Any]:
    return {
        "scenarios": {
            "server/wait/c16/200ms": {
                "throughput": throughput,
                "p50_ms": 425.0,
                "steady": {"throughput": 36.8},
            },
            "server/wait/c1/0ms": {"p50_ms": p50_ms},
        }
    }


def test_a_figure_on_its_bound_passes() -> None:
    rows = _verdicts(_c16_c1(38.0, 20.0))
    assert rows[C16]["verdict"] == "PASS; steady state 36.8 /s"
    assert rows[C1]["verdict"] == "PASS"


def test_a_figure_beyond_its_bound_misses_and_says_by_how_much() -> None:
    rows = _verdicts(_c16_c1(36.89, 20.02))
    assert rows[C16]["measured"] == 36.89
    assert rows[C16]["verdict"] == "MISS (97% of target); steady state 36.8 /s"
    assert rows[C1]["verdict"] == "MISS (1.0x the bound)"


def test_a_target_whose_scenario_did_not_run_is_never_a_pass() -> None:
    rows = report.evaluate({"scenarios": {}})
    assert len(rows) == len(report.TARGETS)
    assert {row["verdict"] for row in rows} == {"n/a"}
    assert all(row["measured"] is None for row in rows)
    assert "| c=8, 0 ms provider: throughput | ≥ 100 /s | — | n/a |" in report.markdown_table(rows)


def test_a_figure_that_is_not_a_number_is_not_measured() -> None:
    rows = _verdicts(_c16_c1(float("nan"), 12.0))
    assert rows[C16]["verdict"] == "n/a"
    assert rows[C1]["verdict"] == "PASS"
    table = report.markdown_table(list(rows.values()))
    assert f"| {C1} | ≤ 20 ms | 12 ms | PASS |" in table


def test_the_memory_verdict_says_how_many_executions_it_is_after() -> None:
    memory = {"executions_per_run": 10_000, "api_rss_after_run2_mb": 189.0}
    rows = _verdicts({"scenarios": {}, "memory": memory})
    row = rows["api process RSS after the executions of the memory runs"]
    assert row["verdict"] == "PASS; 10,000 executions per run"
