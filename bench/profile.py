"""CPU profile of the api and worker processes with py-spy, summarised as top frames.

py-spy samples a running process from outside (no code change, no restart). It samples only
the thread holding the GIL (`--gil`): in these processes the GIL is the resource executions
compete for (the worker runs every agent loop in threads of one interpreter), so "what holds
the GIL" is "where the CPU goes". `--nonblocking` keeps the sampled process running at full
speed. The raw output (collapsed stacks, one `frame;frame;... count` per line) is summarised
by leaf function ("self") and by the top-level package of the leaf ("self by package").
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import REPO, Managed, ProcessSet


def py_spy() -> str | None:
    """The py-spy binary of this venv (pip install py-spy), or on PATH; None if absent."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start_record(
    procs: ProcessSet, binary: str, pid: int, duration_s: int, out: Path, name: str
) -> Managed:
    argv = [
        binary, "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", "200",
        "--format", "raw", "--nolineno", "--gil", "--nonblocking", "--output", str(out),
    ]  # fmt: skip
    return procs.spawn(name, argv, env={"PATH": "/usr/bin:/bin"}, cwd=REPO)


def _package(frame: str) -> str:
    """`func (sqlalchemy/engine/base.py)` → `sqlalchemy`; stdlib modules keep their name."""
    if "(" not in frame:
        return frame
    path = frame.rsplit("(", 1)[1].rstrip(")")
    head = path.split("/", 1)[0]
    return head.removesuffix(".py")


def summarise(raw: Path, top: int = 12) -> dict[str, Any]:
    """Top leaf functions and leaf packages, as % of the samples taken."""
    self_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_fn[frames[-1]] += count
        self_pkg[_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def pct(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": name, "pct": round(100 * n / total, 1)}
            for name, n in counter.most_common(top)
        ]

    if total == 0:
        return {"samples": 0}
    interesting = Counter(
        {k: v for k, v in inclusive.items() if "agent_platform" in k or "smolagents" in k}
    )
    return {
        "samples": total,
        "self_by_package": pct(self_pkg),
        "self_top_functions": pct(self_fn),
        "inclusive_platform_and_smolagents": pct(interesting),
    }
