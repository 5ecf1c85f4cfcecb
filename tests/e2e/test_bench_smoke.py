"""`bench/run.py --quick` end to end: the benchmark itself must keep working.

It starts its own fake provider, databases and platform processes (server and embedded mode)
and exits non-zero only on errors (failed executions, HTTP errors), never on timings, so this
test is stable on a loaded CI machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {
    "sandbox",
    "server/wait/c1/0ms",
    "server/wait/c4/0ms",
    "server/background/c4/0ms",
    "server/stream/c1/0ms",
    "stream_first_step",
    "memory",
    "embedded/wait/c1/0ms",
    "raw-smolagents/c1/0ms",
    "datascale",
}


@pytest.mark.timeout(200)
def test_quick_benchmark_runs_without_errors(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            *(sys.executable, "bench/run.py", "--quick", "--out", str(tmp_path)),
            # the header an API key would come in (the api ignores it until it checks keys)
            *("--header", "Authorization: Bearer smoke"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    lines = [json.loads(ln) for ln in run.stdout.splitlines() if ln.startswith("{")]
    assert lines, run.stdout
    for line in lines:
        assert line["errors"] == 0, line
        if "ok" in line:  # every execution a scenario or baseline started ended well
            assert line["ok"] == line["n"], line
    missing = EXPECTED - {line["scenario"] for line in lines}
    assert not missing, missing
    # every server-mode wait scenario says where its executions' time went
    waits = [ln for ln in lines if re.fullmatch(r"server/wait/c\d+/\d+ms", ln["scenario"])]
    assert waits and all(ln["timeline"]["executions"] > 0 for ln in waits), waits
    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["errors"] == 0
    assert {row["target"] for row in results["targets"]}
    assert "| target |" in (tmp_path / "latest.md").read_text()
    # the record says which libraries and servers were measured, not only which commit
    software = results["source"]["software"]
    assert software["packages"]["smolagents"] == metadata.version("smolagents")
    assert software["postgresql"][:1].isdigit() and software["redis"][:1].isdigit(), software
    assert f"smolagents {software['packages']['smolagents']}" in run.stdout
    # and what a round trip to each server cost, back to back and after idleness
    for server in ("postgresql", "redis"):
        times = results["wake_ups"]["p50_ms"][server]
        assert times["busy"] > 0 and times["after_idle"] > 0, results["wake_ups"]
    assert "round trips: postgresql " in run.stdout
