"""Run `agent-platform api` and `agent-platform worker` as real OS processes for e2e tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

BIN = Path(sys.executable).parent / "agent-platform"
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout_s: float = 30, interval_s: float = 0.1) -> T:
    """Poll until `predicate` returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """Starts and always cleans up the platform's processes; logs go to files for debugging."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.api_url = ""

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        path = self.log_dir / f"{name}-{len(self.procs)}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen(
                [str(BIN), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        proc.log_path = path  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def start_api(self) -> str:
        port = free_port()
        self._spawn("api", "api", "--port", str(port))
        self.api_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.api_url + "/readyz", timeout=1).status_code == 200:
                    return self.api_url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("api did not become ready:\n" + self.logs())

    def start_worker(self, *extra: str, ready: bool = False) -> subprocess.Popen[bytes]:
        """With `ready`, wait until the worker announced it serves (it logs at INFO)."""
        proc = self._spawn("worker", "worker", *extra)
        if ready:
            path: Path = proc.log_path  # type: ignore[attr-defined]
            wait_for(lambda: b"started" in path.read_bytes(), timeout_s=30, interval_s=0.05)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
