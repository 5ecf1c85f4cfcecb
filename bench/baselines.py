"""Baselines the platform is compared with, measured in the same run.

* **ideal**: only the provider's time: an execution of the default script makes 2 model calls,
  so its latency is 2 x provider latency and `c` clients complete at most
  `c / (2 x latency)` executions per second (unbounded for a 0 ms provider).
* **raw smolagents**: `CodeAgent.run` in one process against the same fake provider, with no
  HTTP, database, queue or sandbox (`python -m bench.baselines < config.json`; `c` threads,
  closed loop). The model is the platform's own, made by `Providers.build` (the same SDK
  client, settings and provider loop), so the difference to the platform is what the
  platform adds.
"""

from __future__ import annotations

import itertools
import json
import resource
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from bench.stats import latency_summary

if TYPE_CHECKING:  # the orchestrator imports this module for `ideal` only: keep it light
    from agent_platform.runtime.providers import Providers

STEPS_PER_EXECUTION = 2  # model calls of the fake provider's default script


def ideal(c: int, latency_ms: float) -> dict[str, float | None]:
    """Provider-bound limits: latency 2 x L, throughput c / (2 x L) (None when L = 0)."""
    if latency_ms <= 0:
        return {"latency_ms": 0.0, "throughput": None}
    per_execution_s = STEPS_PER_EXECUTION * latency_ms / 1000
    return {"latency_ms": STEPS_PER_EXECUTION * latency_ms, "throughput": c / per_execution_s}


def run_raw_smolagents(providers: Providers, c: int, n: int) -> dict[str, Any]:
    from smolagents import CodeAgent, LogLevel

    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def work() -> None:
        for k in counter:  # bounded: stops once n runs were started
            if k >= n:
                return
            t0 = time.perf_counter()  # building the agent is part of each execution's cost
            try:
                model = providers.build("claude-sonnet-5-5", threading.Event())
                agent = CodeAgent(tools=[], model=model, verbosity_level=LogLevel.OFF)
                answer = agent.run(f"raw baseline #{k}: what is 2 + 2?")
                if str(answer) != "4":
                    raise ValueError(f"unexpected answer {answer!r}")
            except Exception as exc:  # any failure of the run is an error of the baseline
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, name=f"raw-{i}") for i in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "n": n,
        "ok": len(latencies),
        "errors": n - len(latencies),  # a run that did not end with the answer, whatever the cause
        "error_samples": errors[:3],
        "wall_s": round(wall, 3),
        "throughput": round(len(latencies) / wall, 2) if wall > 0 else 0.0,
        **latency_summary(latencies),
    }


def main() -> int:
    from agent_platform.config import Settings
    from agent_platform.runtime.providers import Providers

    cfg = json.loads(sys.stdin.read())
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        anthropic_api_key="test",
        anthropic_base_url=cfg["base_url"],
        max_retries=0,
    )
    providers = Providers(settings)
    # warm-up (imports, prompt templates, first connection) outside the measurement
    run_raw_smolagents(providers, 1, 2)
    result = run_raw_smolagents(providers, int(cfg["c"]), int(cfg["n"]))
    providers.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["process_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
