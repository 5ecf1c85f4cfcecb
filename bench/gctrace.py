"""Run an `agent-platform` command with its garbage-collector pauses logged (a diagnostic).

    python -m bench.gctrace api --port 8001      # same as `agent-platform api --port 8001`

Used by `bench/run.py --gc-trace`. A full (generation 2) collection walks every tracked object
of the process, and the platform's processes import smolagents, both provider SDKs,
SQLAlchemy and FastAPI, so such a pause stops every request the process is serving. Each
collection longer than `GC_TRACE_MS` (default 20 ms) is written to stderr as one JSON line,
with the number of dead objects it found (objects in reference cycles, which reference
counting could not free); the callback costs nothing measurable between collections.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

MARK = '{"gc_pause_ms"'


def install(threshold_ms: float) -> None:
    started: dict[int, float] = {}

    def callback(phase: str, info: dict[str, Any]) -> None:
        generation = int(info["generation"])
        now = time.perf_counter()
        if phase == "start":
            started[generation] = now
            return
        ms = (now - started.pop(generation, now)) * 1000
        if ms >= threshold_ms:
            line = {
                "gc_pause_ms": round(ms, 1),
                "generation": generation,
                "collected": info["collected"],  # dead objects only the collector could free
                "at": time.time(),
            }
            sys.stderr.write(json.dumps(line) + "\n")
            sys.stderr.flush()

    gc.callbacks.append(callback)


def pauses(log: Path, since: float, until: float) -> dict[str, Any]:
    """Summary of the pauses a traced process logged between two `time.time()` values."""
    found: list[float] = []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith(MARK):
            entry = json.loads(line)
            if since <= entry["at"] <= until:
                found.append(entry["gc_pause_ms"])
    return {
        "count": len(found),
        "max_ms": max(found, default=0.0),
        "total_ms": round(sum(found), 1),
    }


def main() -> None:
    install(float(os.environ.get("GC_TRACE_MS", "20")))
    from agent_platform.cli import app

    sys.argv = ["agent-platform", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
