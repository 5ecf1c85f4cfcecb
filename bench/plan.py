"""How much each scenario runs (full run and `--quick`), and the server-mode process layout.

The full run is sized to finish in about 7 minutes on a 2-core machine at the throughput the
platform reaches there (~115-155 executions/s at c=8; 11 minutes in the machine's slow
states); `--quick` is a smoke test that must stay well under 60 s (it runs the memory
scenario with 100 executions per run, not 10,000).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Plan:
    """How much of everything to run; `--quick` is a smoke test that must stay under 60 s."""

    quick: bool
    warmup_n: int
    c_mid: int  # the "c=8" scenario (c=4 in --quick)
    n_c1: int
    n_mid: int
    n_background: int
    n_stream: int
    profile_s: int
    memory_n: int  # executions per memory run (two runs)
    memory_c: int
    n_c1_200ms: int  # one client alone with 200 ms calls: the platform's serial path, no contention
    n_c16: int
    n_c64: int
    raw_n: dict[int, int]  # raw smolagents runs per concurrency
    embedded_n: dict[int, int]
    pss_c: int
    pss_latency_ms: int
    history_rows: int  # executions already in the server-mode database (see Bench.server)
    rows: int
    read_rate: float
    read_duration_s: float
    sandbox_n: int
    sandbox_threads: str
    wake_up_samples: int  # round trips per measurement of bench.infra.wake_up_costs


FULL = Plan(
    quick=False,
    warmup_n=40,
    c_mid=8,
    n_c1=300,
    n_mid=1200,
    n_background=400,
    n_stream=100,
    profile_s=10,
    memory_n=10_000,  # x 2 runs, as the target reads: ~70 s each at ~140 executions/s
    memory_c=8,
    n_c1_200ms=50,
    n_c16=800,
    n_c64=1280,
    raw_n={1: 200, 8: 800, 16: 480, 64: 1280},
    embedded_n={1: 200, 8: 600, 16: 480},
    pss_c=16,
    pss_latency_ms=3000,
    history_rows=20_000,
    rows=1_000_000,
    read_rate=500,
    read_duration_s=10,
    sandbox_n=300,
    sandbox_threads="4,8",
    wake_up_samples=25,
)

QUICK = Plan(
    quick=True,
    warmup_n=6,
    c_mid=4,
    n_c1=10,
    n_mid=40,
    n_background=20,
    n_stream=5,
    profile_s=0,
    memory_n=100,
    memory_c=4,
    n_c1_200ms=0,
    n_c16=0,
    n_c64=0,
    raw_n={1: 10, 4: 20},
    embedded_n={1: 10, 4: 20},
    pss_c=0,
    pss_latency_ms=0,
    history_rows=1000,
    rows=2000,
    read_rate=100,
    read_duration_s=2,
    sandbox_n=30,
    sandbox_threads="4",
    wake_up_samples=5,
)

ALL_GROUPS = (
    "sandbox", "raw", "server", "background", "stream", "profile", "memory", "embedded",
    "latency200", "pss", "datascale",
)  # fmt: skip
QUICK_GROUPS = (
    "sandbox", "raw", "server", "background", "stream", "memory", "embedded", "datascale",
)  # fmt: skip


@dataclass(frozen=True)
class Topology:
    """Server-mode process layout."""

    api_procs: int
    worker_procs: int
    slots: int  # WORKER_CONCURRENCY per worker process
    prefork: int
    read_api_procs: int  # api processes of the data-scale (read path) scenario
    gc_trace: bool = False  # run the platform's processes through bench.gctrace


def plan_dict(plan: Plan) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in asdict(plan).items()}
