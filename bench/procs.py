"""Start and always stop the processes a benchmark needs: the fake provider, the platform's
`api` / `worker` / `serve` processes, the load generator.

Every process is started in its own session (process group) so that a Ctrl-C in the terminal
reaches only the benchmark, which then stops everything in order; `stop_all` is also run by
`atexit`. Stopping sends SIGTERM to the process group, waits, then SIGKILLs the group and any
descendant that left it (the worker's sandbox zygote and children live in their own groups).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.memory import descendants, is_running, start_time

REPO = Path(__file__).resolve().parent.parent
PLATFORM_BIN = Path(sys.executable).parent / "agent-platform"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A free loopback port (the tiny race with other binders is acceptable for a benchmark)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass
class Managed:
    """One started process, its log file and (at stop time) the descendants it had."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class ProcessSet:
    """Every process one benchmark run starts; `stop_all` is idempotent and exception-safe."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Managed] = []
        self._serial = itertools.count()
        atexit.register(self.stop_all)

    def new_stem(self, name: str) -> str:
        """`name-N` with N unique in the run, so no process's files overwrite an earlier one's."""
        return f"{name}-{next(self._serial)}"

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        cwd: Path,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
        stem: str | None = None,
    ) -> Managed:
        """Start `argv` in its own session; stderr (and stdout unless piped) go to a log."""
        path = self.log_dir / f"{stem or self.new_stem(name)}.log"
        with open(path, "wb") as log:
            popen = subprocess.Popen(
                list(argv),
                env=env,
                cwd=cwd,
                stdin=stdin,
                stdout=stdout if stdout is not None else log,
                stderr=log,
                start_new_session=True,
            )
        managed = Managed(name, popen, path)
        self.procs.append(managed)
        return managed

    def stop(self, proc: Managed, timeout_s: float = 15.0) -> None:
        """SIGTERM the group, wait, SIGKILL what is left (group and stray descendants)."""
        family = [(pid, start_time(pid)) for pid in descendants(proc.pid)]
        if proc.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # helpers left in the group
        deadline = time.monotonic() + 5
        for pid, started in family:
            # the same pid *and* start time: never signal a recycled pid
            while is_running(pid, started) and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)
        for stream in (proc.popen.stdout, proc.popen.stdin):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        """Stop in reverse start order (load, workers, api, provider)."""
        for proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc)


def read_first_line(proc: Managed, timeout_s: float) -> str:
    """The first stdout line of `proc` (e.g. the fake provider's base URL), bounded in time."""
    assert proc.popen.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.popen.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    buf = b""
    try:
        while b"\n" not in buf and time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(proc.popen.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    finally:
        selector.close()
    if b"\n" not in buf:
        raise RuntimeError(f"{proc.name} printed no line in {timeout_s} s:\n{proc.log_tail()}")
    return buf.split(b"\n", 1)[0].decode().strip()


# --------------------------------------------------------------------------- fake provider


@dataclass
class Provider:
    """The fake Anthropic server (tests/fakes/llm_server.py) in its own process."""

    proc: Managed
    base_url: str
    latency_ms: float

    def reset_log(self) -> None:
        """Drop the request log: it keeps every request body and would grow for the whole run."""
        httpx.post(self.base_url + "/_reset", json={"scripts": True}, timeout=10).raise_for_status()

    def log(self, full: bool = False) -> list[dict[str, Any]]:
        url = self.base_url + "/_log" + ("?full=1" if full else "")
        return list(httpx.get(url, timeout=30).json()["requests"])


def start_provider(procs: ProcessSet, latency_ms: float) -> Provider:
    """`python -m tests.fakes.llm_server` from the repo root: its own process, its own GIL."""
    argv = [sys.executable, "-m", "tests.fakes.llm_server", "--port", "0"]
    argv += ["--latency-ms", str(latency_ms)]
    proc = procs.spawn(
        f"provider-{latency_ms:g}ms", argv, env=dict(os.environ), cwd=REPO, stdout=subprocess.PIPE
    )
    base_url = read_first_line(proc, timeout_s=30)
    if not base_url.startswith(f"http://{LOOPBACK}:"):
        raise RuntimeError(f"unexpected provider URL {base_url!r}")
    return Provider(proc, base_url, latency_ms)


# --------------------------------------------------------------------------- the platform


@dataclass
class Platform:
    """A running deployment: its api URLs and the processes to sample for memory/CPU."""

    mode: str  # "server" | "embedded"
    api_urls: list[str]
    api: list[Managed] = field(default_factory=list)
    workers: list[Managed] = field(default_factory=list)
    slots: int = 0

    @property
    def api_pids(self) -> list[int]:
        return [p.pid for p in self.api]

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.workers]

    def describe(self) -> str:
        if self.mode == "embedded":
            return f"embedded: 1 `serve` process (api + in-process worker, {self.slots} slots)"
        return (
            f"server: {len(self.api)} `api` process(es) on separate ports (clients spread "
            f"round-robin, no load balancer), {len(self.workers)} `worker` process(es) x "
            f"{self.slots} slots"
        )


def command(name: str, gc_trace: bool) -> list[str]:
    """`agent-platform <name>`, or the same through bench.gctrace (GC pauses logged)."""
    if gc_trace:
        return [sys.executable, "-m", "bench.gctrace", name]
    return [str(PLATFORM_BIN), name]


def platform_env(
    provider: Provider, *, extra: dict[str, str], drop: Sequence[str] = ()
) -> dict[str, str]:
    """The environment of platform processes: the provider, quiet logs, the run's settings."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        ANTHROPIC_API_KEY="test",
        ANTHROPIC_BASE_URL=provider.base_url,
        LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO),  # only used by bench.gctrace; the platform is installed
    )
    env.update(extra)
    return env


def wait_ready(proc: Managed, url: str, timeout_s: float = 60) -> None:
    """Poll `/readyz` until 200; fail early with the log if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready in {timeout_s} s:\n{proc.log_tail()}")


def wait_sandbox(proc: Managed, prefork: int, timeout_s: float = 60) -> None:
    """A worker is serving once its sandbox zygote has pre-forked its children (the worker
    starts claiming right after; at LOG_LEVEL=warning it does not say so)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}")
        if len(descendants(proc.pid)) >= 1 + prefork:
            time.sleep(0.2)  # from the pool being ready to the worker loop running
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name}: sandbox not started in {timeout_s} s:\n{proc.log_tail()}")


def start_server_mode(
    procs: ProcessSet,
    provider: Provider,
    *,
    database_url: str,
    redis_url: str,
    namespace: str,
    run_dir: Path,
    api_procs: int,
    worker_procs: int,
    slots: int,
    prefork: int,
    gc_trace: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Platform:
    """`api` processes on their own ports (one uvicorn process each, so TCP_NODELAY applies)
    and `worker` processes; the schema must already be migrated."""
    env = platform_env(
        provider,
        extra={
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REDIS_NAMESPACE": namespace,
            "SANDBOX_PREFORK": str(prefork),
            **(extra_env or {}),
        },
    )
    # WORKER_CONCURRENCY only for workers; every process keeps its own fixed database pool
    # (DB_POOL_SIZE), which bursts wait on rather than grow
    worker_env = {**env, "WORKER_CONCURRENCY": str(slots)}
    platform = Platform("server", [], slots=slots)
    for _ in range(worker_procs):
        argv = [*command("worker", gc_trace), "--concurrency", str(slots), "--grace", "2"]
        platform.workers.append(procs.spawn("worker", argv, env=worker_env, cwd=run_dir))
    _start_apis(procs, platform, "api", api_procs, env, run_dir, gc_trace)
    for proc in platform.workers:
        wait_sandbox(proc, prefork)
    return platform


def start_api_only(
    procs: ProcessSet,
    provider: Provider,
    *,
    database_url: str,
    redis_url: str,
    namespace: str,
    run_dir: Path,
    tenant_id: str,
    count: int,
    gc_trace: bool = False,
) -> Platform:
    """`count` api processes serving `tenant_id` (TENANT_ID, instance mode), no worker: for
    the read-path scenario."""
    env = platform_env(
        provider,
        extra={
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REDIS_NAMESPACE": namespace,
            "TENANT_ID": tenant_id,
        },
    )
    platform = Platform("server", [])
    _start_apis(procs, platform, "api-read", count, env, run_dir, gc_trace)
    return platform


def _start_apis(
    procs: ProcessSet,
    platform: Platform,
    name: str,
    count: int,
    env: dict[str, str],
    run_dir: Path,
    gc_trace: bool,
) -> None:
    """`count` api processes, each on its own port, added to `platform` once ready."""
    for _ in range(count):
        port = free_port()
        argv = [*command("api", gc_trace), "--host", LOOPBACK, "--port", str(port)]
        platform.api.append(procs.spawn(name, argv, env=env, cwd=run_dir))
        platform.api_urls.append(f"http://{LOOPBACK}:{port}")
    for proc, url in zip(platform.api, platform.api_urls, strict=True):
        wait_ready(proc, url)


def start_embedded(
    procs: ProcessSet,
    provider: Provider,
    *,
    run_dir: Path,
    slots: int,
    prefork: int,
    gc_trace: bool = False,
) -> Platform:
    """`agent-platform serve`: SQLite in a temporary DATA_DIR, in-process worker, no Redis."""
    data_dir = run_dir / "embedded-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = platform_env(
        provider,
        extra={
            "DATA_DIR": str(data_dir),
            "WORKER_CONCURRENCY": str(slots),
            "SANDBOX_PREFORK": str(prefork),
        },
        drop=("DATABASE_URL", "REDIS_URL", "REDIS_NAMESPACE"),
    )
    port = free_port()
    argv = [*command("serve", gc_trace), "--host", LOOPBACK, "--port", str(port)]
    proc = procs.spawn("serve", argv, env=env, cwd=run_dir)
    url = f"http://{LOOPBACK}:{port}"
    wait_ready(proc, url)
    wait_sandbox(proc, prefork)
    return Platform("embedded", [url], api=[proc], slots=slots)


def stop_platform(procs: ProcessSet, platform: Platform) -> None:
    """Workers first (they drain), then the api processes."""
    for proc in platform.workers + platform.api:
        procs.stop(proc)


def migrate(database_url: str, run_dir: Path, timeout_s: float = 120) -> str:
    """`agent-platform migrate`; returns its one-line report."""
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "warning"}
    out = subprocess.run(
        [str(PLATFORM_BIN), "migrate"],
        env=env,
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1]


def run_json(
    procs: ProcessSet,
    argv: Sequence[str],
    *,
    timeout_s: float,
    name: str,
    config: dict[str, Any] | None = None,
    whole_output: bool = False,
) -> dict[str, Any]:
    """Run `argv` (from the repo root) with `config` as JSON on stdin and parse its stdout as
    JSON: the last line, or with `whole_output` all of it.

    Used for the load generator and the baselines so they do not share a GIL (or a CPU
    accounting) with the orchestrator that samples memory; their stdout goes to a file, so a
    large output can never block them on a full pipe."""
    stem = procs.new_stem(name)
    stdin_path = procs.log_dir / f"{stem}.in.json"
    stdin_path.write_text(json.dumps(config or {}))
    out_path = stdin_path.with_suffix(".out")
    with open(stdin_path, "rb") as fin, open(out_path, "wb") as fout:
        proc = procs.spawn(
            name,
            argv,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=REPO,
            stdin=fin.fileno(),
            stdout=fout.fileno(),
            stem=stem,
        )
        try:
            proc.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            procs.stop(proc)
            raise RuntimeError(f"{name} did not finish in {timeout_s:.0f} s") from None
    procs.stop(proc)
    text = out_path.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if proc.popen.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed ({proc.popen.returncode}):\n{proc.log_tail()}")
    return dict(json.loads(text if whole_output else lines[-1]))


def run_module(
    procs: ProcessSet, module: str, config: dict[str, Any], *, timeout_s: float
) -> dict[str, Any]:
    """`python -m <module>` (bench.load, bench.baselines) with `config` on stdin."""
    return run_json(
        procs,
        [sys.executable, "-m", module],
        timeout_s=timeout_s,
        name=module.rsplit(".", 1)[-1],
        config=config,
    )
