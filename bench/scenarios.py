"""The scenarios: each starts what it needs, measures, prints one JSON line and records it.

`Bench` owns everything a run starts (`ProcessSet`), the RSS sampler and the results. Scenario
groups run in phases by provider latency, because the provider's latency is fixed when its
process starts and the platform's processes are pointed at one provider:

* 0 ms: raw smolagents baselines, server mode (wait, background+poll, stream, profile, memory),
  embedded mode;
* 200 ms: raw baselines, server mode c=16 and c=64, embedded c=16;
* slow (3 s per call): PSS per running execution;
* data scale: a separate database with generated rows and api processes only.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench import baselines, datascale, gctrace, profile, timeline
from bench.infra import REDIS_URL, Database
from bench.memory import (
    CpuMeter,
    Group,
    RssSampler,
    all_descendants,
    tree_pss_mb,
    tree_rss_mb,
)
from bench.plan import Plan, Topology
from bench.procs import (
    REPO,
    Platform,
    ProcessSet,
    Provider,
    migrate,
    run_json,
    run_module,
    start_api_only,
    start_embedded,
    start_provider,
    start_server_mode,
    stop_platform,
)
from bench.stats import cpu_probe_ms, latency_summary

EXECUTE = "/api/v1/agent/execute"
CPUS = os.cpu_count() or 1


class Bench:
    def __init__(
        self,
        plan: Plan,
        topology: Topology,
        groups: set[str],
        run_dir: Path,
        database: Database,
        namespace: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.plan = plan
        self.headers = headers or {}  # on every request of the load generators
        self.topology = topology
        self.groups = groups
        self.run_dir = run_dir
        self.database = database
        self.namespace = namespace
        log_dir = run_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs = ProcessSet(log_dir)
        self.sampler = RssSampler(0.25).start()
        self.results: dict[str, Any] = {"scenarios": {}}
        self.raw: dict[tuple[int, float], float] = {}  # (c, latency) → raw throughput
        self.served = 0  # executions served by the current server-mode api processes
        self.migrated = False

    def close(self) -> None:
        self.sampler.stop()
        self.procs.stop_all()

    # ------------------------------------------------------------------ output

    def emit(self, key: str, data: dict[str, Any], *, section: str | None = None) -> None:
        """Print one JSON line for the scenario and keep it in the results."""
        line = {"scenario": key, **data}
        line.setdefault("errors", 0)
        print(json.dumps(line, default=str), flush=True)
        self.results["scenarios"][key] = line
        if section:
            self.results[section] = line

    def failed(self, key: str, exc: BaseException) -> None:
        """A scenario that could not run counts as an error (and the run exits non-zero)."""
        text = f"{type(exc).__name__}: {exc}"
        if len(text) > 2000:  # a process's log tail: its end says what went wrong
            text = text[:300] + " [...] " + text[-1700:]
        self.emit(key, {"errors": 1, "exception": text})

    @contextmanager
    def guard(self, key: str) -> Iterator[None]:
        try:
            yield
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            self.failed(key, exc)

    # ------------------------------------------------------------------ building blocks

    def _instrument(self, platform: Platform, provider: Provider | None) -> dict[str, Group]:
        if platform.mode == "embedded":
            groups: dict[str, Group] = {
                "api": (lambda: platform.api_pids, False),
                "worker_tree": (lambda: platform.api_pids, True),
            }
        elif platform.workers:
            groups = {
                "api": (lambda: platform.api_pids, True),
                "worker": (lambda: platform.worker_pids, False),
                "worker_tree": (lambda: platform.worker_pids, True),
            }
        else:
            groups = {"api": (lambda: platform.api_pids, True)}
        pg: dict[str, Callable[[], list[int]]] = {"api": lambda: platform.api_pids}
        if platform.workers:
            pg["worker"] = lambda: platform.worker_pids
        self.sampler.watch(groups, pg)
        # the worker's own threads and its sandbox (zygote + children) are counted apart
        cpu: dict[str, Group] = {}
        if platform.mode == "embedded":
            cpu["api+worker"] = (lambda: platform.api_pids, False)
            cpu["sandbox"] = (lambda: all_descendants(platform.api_pids), True)
        else:
            cpu["api"] = (lambda: platform.api_pids, True)
        if platform.workers:
            cpu["worker"] = (lambda: platform.worker_pids, False)
            cpu["sandbox"] = (lambda: all_descendants(platform.worker_pids), True)
        if provider is not None:
            cpu["provider"] = (lambda: [provider.proc.pid], True)
        cpu["bench"] = (lambda: [os.getpid()], False)  # this process: the /proc sampling
        return cpu

    def _gc_pauses(self, platform: Platform, since: float) -> dict[str, Any]:
        """With --gc-trace: each platform process's collections > 20 ms since `since`."""
        if not self.topology.gc_trace:
            return {}
        until = time.time()
        procs = [(f"api{i}", p) for i, p in enumerate(platform.api)]
        procs += [(f"worker{i}", p) for i, p in enumerate(platform.workers)]
        return {name: gctrace.pauses(p.log_path, since, until) for name, p in procs}

    def closed(
        self,
        platform: Platform,
        provider: Provider,
        mode: str,
        c: int,
        n: int,
        *,
        tag: str = "",
        warmup: bool = False,
        keep_log: bool = False,
    ) -> dict[str, Any]:
        """A closed-loop run through the load generator; emits and returns its line (with
        the provider's request log when `keep_log`). A server-mode scenario that waits (not a
        warm-up, profiled or memory run) also says where its executions' time went
        (`bench.timeline`)."""
        key = f"{platform.mode}/{mode}/c{c}/{provider.latency_ms:g}ms{tag}"
        with_timeline = platform.mode == "server" and mode == "wait" and not tag
        cpu_groups = self._instrument(platform, provider)
        meter = CpuMeter(cpu_groups)
        cfg = {
            "kind": "closed",
            "urls": platform.api_urls,
            "mode": mode,
            "c": c,
            "n": n,
            "task_prefix": f"bench {key}",
            "timeout_s": 120,
            "poll_interval_s": 0.02,
            "headers": self.headers,
            "timeline": with_timeline,
        }
        probe_ms = cpu_probe_ms()
        self.sampler.reset()
        meter.start()
        since = time.time()
        out = run_module(self.procs, "bench.load", cfg, timeout_s=120 + 3 * n / c)
        cpu = meter.stop()
        # the load generator has exited: its CPU, which it reported, is in "other" until here;
        # what it spent starting (imports, its clients) is not the executions' and leaves the
        # machine total too
        setup = max(0.0, out["client_cpu_s"] - out["client_cpu_run_s"])
        cpu["load_generator"] = out["client_cpu_run_s"]
        cpu["other"] = round(max(0.0, cpu["other"] - out["client_cpu_s"]), 2)
        cpu["machine"] = round(max(0.0, cpu["machine"] - setup), 2)
        gc_pauses = self._gc_pauses(platform, since)
        peaks = self.sampler.peaks()
        provider_log = provider.log(full=True) if keep_log else None
        provider.reset_log()  # it keeps every request body; bound its memory
        if platform.mode == "server":
            self.served += out["ok"]
        ok = max(1, out["ok"])
        ideal = baselines.ideal(c, provider.latency_ms)
        raw = self.raw.get((c, provider.latency_ms))
        line: dict[str, Any] = {
            "mode": mode,
            "c": c,
            "n": n,
            "provider_latency_ms": provider.latency_ms,
            "platform": platform.describe(),
            **{k: v for k, v in out.items() if k != "details"},
            "load_generator_setup_cpu_s": round(setup, 2),
            "cpu_probe_ms": probe_ms,  # the machine's speed just before (lower is faster)
            "rss_peak_mb": {k: v for k, v in peaks.items() if not k.startswith("pg_")},
            "pg_connections_peak": {
                k.removeprefix("pg_conns_"): int(v) for k, v in peaks.items() if k.startswith("pg_")
            },
            "ideal_throughput": ideal["throughput"],
            "ideal_latency_ms": ideal["latency_ms"],
            "vs_ideal": round(out["throughput"] / ideal["throughput"], 3)
            if ideal["throughput"]
            else None,
            "raw_smolagents_throughput": raw,
            "vs_raw_smolagents": round(out["throughput"] / raw, 3) if raw else None,
            "cpu_s": cpu,
            **machine_shares(cpu),
            "cpu_ms_per_execution": {
                k: round(1000 * v / ok, 2) for k, v in cpu.items() if k not in ("wall_s", "steal")
            },
        }
        if gc_pauses:
            line["gc_pauses_over_20ms"] = gc_pauses
        if with_timeline:
            line["timeline"] = timeline.measure(self.database.dsn, out.get("details", []))
        if warmup:
            line["warmup"] = True
        self.emit(key, line)
        if "details" in out and mode == "stream":
            line["details"] = out["details"]
        if provider_log is not None:
            line["provider_log"] = provider_log
        return line

    def warm(self, platform: Platform, provider: Provider) -> None:
        """Connections, caches and the sandbox's pre-forked children, outside measurements."""
        self.closed(platform, provider, "wait", 4, self.plan.warmup_n, tag="/warmup", warmup=True)

    def server(self, provider: Provider, *, slots: int | None = None) -> Platform:
        t = self.topology
        if not self.migrated:
            migrate(self.database.url, self.run_dir)
            # A deployment's database holds history, and autovacuum keeps its statistics.
            # A new, empty one would have neither: PostgreSQL would plan each prepared
            # statement for nearly empty tables and keep that plan (a scan of all of a
            # tenant's or all running executions for every lookup by id) while they grow.
            self.results["history"] = asyncio.run(
                datascale.bulk_load(self.database.dsn, self.plan.history_rows)
            )
            self.migrated = True
        platform = start_server_mode(
            self.procs,
            provider,
            database_url=self.database.url,
            redis_url=REDIS_URL,
            namespace=self.namespace,
            run_dir=self.run_dir,
            api_procs=t.api_procs,
            worker_procs=t.worker_procs,
            slots=slots or t.slots,
            prefork=t.prefork,
            gc_trace=t.gc_trace,
        )
        self.served = 0
        self.results["topology"] = platform.describe()
        return platform

    # ------------------------------------------------------------------ scenario groups

    def sandbox(self) -> None:
        """bench/sandbox_start.py as a subprocess, on a machine with nothing else of ours
        running (it measures fork/namespace set-up, which competes for the same 2 cores)."""
        with self.guard("sandbox"):
            argv = [
                sys.executable, str(REPO / "bench" / "sandbox_start.py"),
                "--n", str(self.plan.sandbox_n), "--threads", self.plan.sandbox_threads,
            ]  # fmt: skip
            out = run_json(self.procs, argv, timeout_s=300, name="sandbox", whole_output=True)
            seq = out["sequential"]
            self.emit(
                "sandbox",
                {
                    "n": seq["spawn"]["n"],
                    "spawn_p50_ms": seq["spawn"]["p50_ms"],
                    "spawn_p99_ms": seq["spawn"]["p99_ms"],
                    "first_result_after_spawn": seq["first_result_after_spawn"],
                    "close": seq["close"],
                    "concurrent_spawn": {
                        f"{x['threads']} threads": x["spawn"] for x in out["concurrent"]
                    },
                    "two_step_execution": out["two_step_execution"],
                    "zygote_start_ms": out["zygote_start_ms"],
                    "isolation_level": out["isolation_level"],
                },
                section="sandbox",
            )

    def raw_baselines(self, provider: Provider, concurrencies: list[int]) -> None:
        for c in concurrencies:
            n = self.plan.raw_n.get(c)
            if not n:
                continue
            key = f"raw-smolagents/c{c}/{provider.latency_ms:g}ms"
            with self.guard(key):
                cfg = {"base_url": provider.base_url, "c": c, "n": n}
                out = run_module(self.procs, "bench.baselines", cfg, timeout_s=120 + 3 * n / c)
                provider.reset_log()
                self.raw[(c, provider.latency_ms)] = out["throughput"]
                ideal = baselines.ideal(c, provider.latency_ms)
                self.emit(
                    key,
                    {
                        "mode": "in-process CodeAgent.run, threads",
                        "c": c,
                        "provider_latency_ms": provider.latency_ms,
                        **out,
                        "ideal_throughput": ideal["throughput"],
                        "vs_ideal": round(out["throughput"] / ideal["throughput"], 3)
                        if ideal["throughput"]
                        else None,
                    },
                )

    def phase_fast(self) -> None:
        """0 ms provider: the platform's own overhead."""
        plan, groups = self.plan, self.groups
        provider = start_provider(self.procs, 0)
        try:
            if "raw" in groups:
                self.raw_baselines(provider, [1, plan.c_mid])
            wanted = {"server", "background", "stream", "profile", "memory"}
            if groups & wanted:
                with self.guard("server/0ms"):
                    platform = self.server(provider)
                    try:
                        self._server_fast(platform, provider)
                    finally:
                        stop_platform(self.procs, platform)
            if "embedded" in groups:
                with self.guard("embedded/0ms"):
                    self._embedded(provider, [1, plan.c_mid], "0ms")
        finally:
            self.procs.stop(provider.proc)

    def _server_fast(self, platform: Platform, provider: Provider) -> None:
        plan, groups = self.plan, self.groups
        self.warm(platform, provider)
        if "server" in groups:
            self.closed(platform, provider, "wait", 1, plan.n_c1)
            self.closed(platform, provider, "wait", plan.c_mid, plan.n_mid)
        if "background" in groups:
            self.closed(platform, provider, "background", plan.c_mid, plan.n_background)
        if "stream" in groups:
            with self.guard("stream_first_step"):
                self.stream(platform, provider, plan.n_stream)
        if "profile" in groups and plan.profile_s:
            with self.guard("profile"):
                self.profiled(platform, provider, plan.c_mid, plan.profile_s)
        if "memory" in groups:
            with self.guard("memory"):
                self.memory(platform, provider)

    def stream(self, platform: Platform, provider: Provider, n: int) -> None:
        """`stream: true`, c=1: the first `step` event's arrival vs the provider's answer to
        the first model call (request log timestamp + latency), both on `time.time()`."""
        provider.reset_log()
        key = f"{platform.mode}/stream/c1/{provider.latency_ms:g}ms"
        line = self.closed(platform, provider, "stream", 1, n, keep_log=True)
        first_calls = [r for r in line["provider_log"] if r["index"] == 0]
        deltas: list[float] = []
        unmatched = 0
        for detail in line.get("details", []):
            rec = next((r for r in first_calls if detail["task"] in json.dumps(r["body"])), None)
            if rec is None or detail.get("first_step_wall") is None:
                unmatched += 1
                continue
            answered = rec["timestamp"] + provider.latency_ms / 1000
            deltas.append((detail["first_step_wall"] - answered) * 1000)
        self.emit(
            "stream_first_step",
            {
                "from": key,
                "n": len(deltas),
                "errors": unmatched + line["errors"],
                **latency_summary(deltas),
                "min_ms": round(min(deltas), 2) if deltas else None,
            },
            section="stream_first_step",
        )

    def profiled(self, platform: Platform, provider: Provider, c: int, seconds: int) -> None:
        """py-spy on the first api and worker process during a c=8 run of about `seconds`
        (a separate run: sampling costs some CPU, so it is not the measured c=8 run)."""
        binary = profile.py_spy()
        if binary is None:
            self.results["profile"] = {"skipped": "py-spy is not installed"}
            return
        before = self.results["scenarios"].get(f"server/wait/c{c}/0ms", {})
        n = int(max(20.0, before.get("throughput", 20.0)) * (seconds + 1))
        out_dir = self.run_dir / "profile"
        out_dir.mkdir(exist_ok=True)
        targets = {"api": platform.api_pids[0]}
        if platform.worker_pids:
            targets["worker"] = platform.worker_pids[0]
        spies = {
            name: profile.start_record(
                self.procs, binary, pid, seconds, out_dir / f"{name}.txt", f"py-spy-{name}"
            )
            for name, pid in targets.items()
        }
        time.sleep(0.5)  # py-spy attaches
        self.closed(platform, provider, "wait", c, n, tag="/profiled")
        summary: dict[str, Any] = {"duration_s": seconds, "files": str(out_dir)}
        for name, spy in spies.items():
            spy.popen.wait(timeout=seconds + 60)
            raw = out_dir / f"{name}.txt"
            summary[name] = profile.summarise(raw) if raw.exists() else {"error": spy.log_tail(500)}
            self.procs.stop(spy)
        self.results["profile"] = summary

    def memory(self, platform: Platform, provider: Provider) -> None:
        """Two equal runs; the api's RSS after each, once it went idle again."""
        plan = self.plan
        rss: list[float] = []
        errors = 0
        for run in (1, 2):
            line = self.closed(
                platform, provider, "wait", plan.memory_c, plan.memory_n, tag=f"/memory-run{run}"
            )
            errors += line["errors"]
            time.sleep(2)
            rss.append(max(tree_rss_mb([pid]) for pid in platform.api_pids))
        growth = 100 * (rss[1] - rss[0]) / rss[0]
        self.emit(
            "memory",
            {
                "executions_per_run": plan.memory_n,
                "c": plan.memory_c,
                "api_processes": len(platform.api_pids),
                "executions_served_by_api_total": self.served,
                "api_rss_after_run1_mb": round(rss[0], 1),
                "api_rss_after_run2_mb": round(rss[1], 1),
                "api_rss_growth_mb": round(rss[1] - rss[0], 1),
                "api_rss_growth_pct": round(growth, 2),
                "worker_rss_mb": round(tree_rss_mb(platform.worker_pids[:1]), 1)
                if platform.worker_pids
                else None,
                "errors": errors,
            },
            section="memory",
        )

    def _embedded(self, provider: Provider, concurrencies: list[int], tag: str) -> None:
        platform = start_embedded(
            self.procs,
            provider,
            run_dir=self.run_dir / f"embedded-{tag}",
            slots=self.topology.slots,
            prefork=self.topology.prefork,
            gc_trace=self.topology.gc_trace,
        )
        try:
            self.warm(platform, provider)
            for c in concurrencies:
                n = self.plan.embedded_n.get(c)
                if n:
                    self.closed(platform, provider, "wait", c, n)
        finally:
            stop_platform(self.procs, platform)

    def phase_200ms(self) -> None:
        """200 ms provider: does the platform keep up with many slow executions?"""
        plan = self.plan
        provider = start_provider(self.procs, 200)
        try:
            if "raw" in self.groups:
                self.raw_baselines(provider, [16, 64])
            with self.guard("server/200ms"):
                platform = self.server(provider)
                try:
                    self.warm(platform, provider)
                    self.closed(platform, provider, "wait", 1, plan.n_c1_200ms)
                    self.closed(platform, provider, "wait", 16, plan.n_c16)
                    self.closed(platform, provider, "wait", 64, plan.n_c64)
                finally:
                    stop_platform(self.procs, platform)
            if "embedded" in self.groups:
                with self.guard("embedded/200ms"):
                    self._embedded(provider, [16], "200ms")
        finally:
            self.procs.stop(provider.proc)

    def phase_pss(self) -> None:
        """PSS of the worker tree (worker + zygote + sandbox children) idle, then with
        `pss_c` executions all waiting on a slow provider; the delta per execution."""
        plan = self.plan
        provider = start_provider(self.procs, plan.pss_latency_ms)
        try:
            with self.guard("pss"):
                platform = self.server(provider, slots=max(self.topology.slots, plan.pss_c))
                try:
                    self._pss(platform, provider)
                finally:
                    stop_platform(self.procs, platform)
        finally:
            self.procs.stop(provider.proc)

    def _pss(self, platform: Platform, provider: Provider) -> None:
        c = self.plan.pss_c
        time.sleep(2)  # the pool's pre-forked children are up, the worker is idle

        def measure() -> tuple[float, int]:
            samples = []
            for _ in range(3):
                samples.append(tree_pss_mb(platform.worker_pids))
                time.sleep(0.1)
            return statistics.median(s[0] for s in samples), max(s[1] for s in samples)

        idle_mb, idle_procs = measure()
        ids: list[str] = []
        with httpx.Client(base_url=platform.api_urls[0], timeout=30, headers=self.headers) as http:
            for k in range(c):
                body = {"task": f"bench pss #{k}: what is 2 + 2?", "tools": [], "background": True}
                ids.append(http.post(EXECUTE, json=body).raise_for_status().json()["execution_id"])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # every execution is in its first model call
                if sum(1 for r in provider.log() if r["index"] == 0) >= c:
                    break
                time.sleep(0.05)
            time.sleep(0.3)
            running = http.get("/api/v1/agent/executions?status=running&limit=1").json()["total"]
            busy_mb, busy_procs = measure()
            errors = 0
            deadline = time.monotonic() + 4 * plan_seconds(self.plan.pss_latency_ms) + 60
            for execution_id in ids:
                status = ""
                while time.monotonic() < deadline:
                    status = http.get(f"/api/v1/agent/execution/{execution_id}").json()["status"]
                    if status in ("completed", "failed", "cancelled", "timed_out"):
                        break
                    time.sleep(0.2)
                errors += status != "completed"
        self.emit(
            "pss",
            {
                "c": c,
                "provider_latency_ms": provider.latency_ms,
                "running_when_measured": running,
                "worker_tree_pss_idle_mb": round(idle_mb, 1),
                "worker_tree_pss_busy_mb": round(busy_mb, 1),
                "processes_idle": idle_procs,
                "processes_busy": busy_procs,
                "per_execution_mb": round((busy_mb - idle_mb) / c, 2),
                "errors": errors,
            },
            section="pss",
        )

    def phase_datascale(self, database: Database) -> None:
        """Generated rows in their own database; api processes only; open-loop reads. With
        more than one api process configured, one process alone is measured too (where a
        single process saturates is worth knowing)."""
        plan = self.plan
        provider = start_provider(self.procs, 0)  # the api wants a configured provider
        try:
            migrate(database.url, self.run_dir)
            load = asyncio.run(datascale.bulk_load(database.dsn, plan.rows))
            counts = [self.topology.read_api_procs]
            if self.topology.read_api_procs != 1 and not plan.quick:
                counts.append(1)
            for count in counts:
                key = "datascale" if count == counts[0] else f"datascale/{count}api"
                with self.guard(key):
                    self._read_path(database, provider, load, count, key)
        finally:
            self.procs.stop(provider.proc)

    def _read_path(
        self, database: Database, provider: Provider, load: dict[str, Any], count: int, key: str
    ) -> None:
        plan = self.plan
        platform = start_api_only(
            self.procs,
            provider,
            database_url=database.url,
            redis_url=REDIS_URL,
            namespace=self.namespace,
            run_dir=self.run_dir,
            tenant_id=datascale.tenant_name(datascale.SERVED_TENANT),
            count=count,
            gc_trace=self.topology.gc_trace,
        )
        try:
            meter = CpuMeter(self._instrument(platform, None))
            cfg = {
                "kind": "open",
                "urls": platform.api_urls,
                "rate": plan.read_rate,
                "duration_s": plan.read_duration_s,
                # a fresh api process opens its pool connections and has asyncpg introspect
                # and prepare its statements on each: seconds of start-up, not steady state
                "warmup_s": 3.0,
                "paths": datascale.request_paths(plan.rows, 1000),
                "headers": self.headers,
            }
            self.sampler.reset()
            meter.start()
            since = time.time()
            out = run_module(self.procs, "bench.load", cfg, timeout_s=plan.read_duration_s + 120)
            cpu = meter.stop()
            cpu["load_generator"] = out["client_cpu_s"]
            cpu["other"] = round(max(0.0, cpu["other"] - out["client_cpu_s"]), 2)
            if self.topology.gc_trace:
                out["gc_pauses_over_20ms"] = self._gc_pauses(platform, since)
            self.emit(
                key,
                {
                    "mode": "open loop, GET execution + GET executions?limit=50 alternating",
                    "api_processes": count,
                    "tenant": datascale.tenant_name(datascale.SERVED_TENANT),
                    "load": load,
                    **out,
                    "peaks": self.sampler.peaks(),
                    "cpu_s": cpu,
                    **machine_shares(cpu),
                },
                section=key,
            )
        finally:
            stop_platform(self.procs, platform)


def machine_shares(cpu: dict[str, float]) -> dict[str, float]:
    """Shares of the machine's cores during a scenario that the run did not get: used by
    programs outside it (`other`), and stolen by the hypervisor from the virtual cores."""
    capacity = cpu["wall_s"] * CPUS
    return {
        "machine_noise_pct": round(100 * cpu["other"] / capacity, 1),
        "machine_steal_pct": round(100 * cpu["steal"] / capacity, 1),
    }


def plan_seconds(latency_ms: int) -> float:
    """Seconds one default-script execution spends waiting on a provider of this latency."""
    return baselines.STEPS_PER_EXECUTION * latency_ms / 1000
