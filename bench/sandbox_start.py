"""Sandbox start-up and 2-step execution benchmark.

Prints JSON: zygote start time, ``spawn()`` latency p50/p99 over N starts (sequential and from
concurrent threads), time to the first result in a fresh sandbox, ``close()`` time, and a 2-step
execution (two code executions, the first one calling a tool) with the sandbox vs smolagents'
in-process ``LocalPythonExecutor``.

    python bench/sandbox_start.py [--n 300] [--prefork 4] [--threads 4,8]

"concurrent" has every thread spawn -> run ``1`` -> close back to back: a saturation test of
sandbox churn (each sandbox costs about 2 ms of CPU: fork, mount namespace set-up, uid switch,
exit and teardown), not the latency seen by executions that last seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from smolagents.default_tools import FinalAnswerTool
from smolagents.local_python_executor import LocalPythonExecutor
from smolagents.tools import Tool

from agent_platform.runtime.sandbox import SandboxLimits, SandboxPool

AUTHORIZED_IMPORTS = ["math", "statistics", "random", "datetime", "time", "re", "json"]
STEP_1 = "info = lookup(key='answer')\nprint('got', info)\ninfo['value']"
STEP_2 = "final_answer(info['value'] * 2)"


class Lookup(Tool):
    name = "lookup"
    description = "Look a key up"
    inputs = {"key": {"type": "string", "description": "key"}}
    output_type = "object"

    def forward(self, key: str) -> Any:
        return {"key": key, "value": 21}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[idx], 3)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": pct(values, 50),
        "p99_ms": pct(values, 99),
        "mean_ms": round(statistics.fmean(values), 3),
        "max_ms": round(max(values), 3),
        "n": len(values),
    }


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def bench_sequential(pool: SandboxPool, n: int) -> dict[str, Any]:
    spawn, first, close = [], [], []
    for i in range(n):
        t = time.perf_counter()
        ex = pool.spawn(execution_id=f"seq-{i}")
        spawn.append(ms(t))
        t = time.perf_counter()
        ex("1")
        first.append(ms(t))
        t = time.perf_counter()
        ex.close()
        close.append(ms(t))
    return {
        "spawn": summary(spawn),
        "first_result_after_spawn": summary(first),
        "close": summary(close),
    }


def bench_concurrent(pool: SandboxPool, n: int, threads: int) -> dict[str, Any]:
    spawn: list[float] = []
    lock = threading.Lock()

    def work(count: int) -> None:
        for i in range(count):
            t = time.perf_counter()
            ex = pool.spawn(execution_id=f"conc-{i}")
            took = ms(t)
            ex("1")
            ex.close()
            with lock:
                spawn.append(took)

    workers = [threading.Thread(target=work, args=(n // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"threads": threads, "spawn": summary(spawn)}


def bench_two_steps(pool: SandboxPool, n: int) -> dict[str, Any]:
    sandbox, local = [], []
    for i in range(n):
        tools = {"lookup": Lookup(), "final_answer": FinalAnswerTool()}
        t = time.perf_counter()
        ex = pool.spawn(execution_id=f"two-{i}")
        ex.send_tools(tools)
        ex.send_variables({})
        ex(STEP_1)
        out = ex(STEP_2)
        ex.close()
        sandbox.append(ms(t))
        assert out.is_final_answer and out.output == 42

        t = time.perf_counter()
        lex = LocalPythonExecutor(AUTHORIZED_IMPORTS)
        lex.send_tools(tools)
        lex.send_variables({})
        lex(STEP_1)
        out = lex(STEP_2)
        local.append(ms(t))
        assert out.is_final_answer and out.output == 42
    return {
        "sandbox (spawn+2 calls+close)": summary(sandbox),
        "local_python_executor (in-process)": summary(local),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--prefork", type=int, default=4)
    parser.add_argument("--threads", default="4,8", help="comma-separated thread counts")
    args = parser.parse_args()
    pool = SandboxPool(
        limits=SandboxLimits(), authorized_imports=AUTHORIZED_IMPORTS, prefork=args.prefork
    )
    t = time.perf_counter()
    pool.start()
    start_ms = ms(t)
    try:
        for i in range(10):  # warm-up
            pool.spawn(execution_id=f"warm-{i}").close()
        report = {
            "isolation_level": pool.isolation_level,
            "layers": {k: v for k, v in pool.isolation_details.items() if k != "errors"},
            "cpus": os.cpu_count(),
            "prefork": args.prefork,
            "zygote_start_ms": round(start_ms, 1),
            "sequential": bench_sequential(pool, args.n),
            "concurrent": [bench_concurrent(pool, args.n, int(t)) for t in args.threads.split(",")],
            "two_step_execution": bench_two_steps(pool, max(20, args.n // 3)),
        }
    finally:
        pool.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
