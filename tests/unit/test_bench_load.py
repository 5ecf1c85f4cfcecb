"""The load generators send the benchmark's extra headers (`bench/run.py --header`, an API
key once the platform requires one) with every request, closed loop and open loop alike."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from bench.load import EXECUTE, closed_loop, open_loop
from bench.run import header

KEY = {"Authorization": "Bearer bench-key"}


class _Recorder(BaseHTTPRequestHandler):
    """Answers every execution as completed with the expected result; notes each request's
    Authorization header."""

    disable_nagle_algorithm = True  # loopback timings: no 40 ms delayed-ACK stalls
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, str | None]]

    def _answer(self, body: dict[str, object]) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer({"execution_id": "e1", "status": "completed", "result": "4"})

    def do_GET(self) -> None:
        self._answer({"executions": []})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[str, str, str | None]]]]:
    seen: list[tuple[str, str, str | None]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_every_request_carries_the_extra_headers(
    recorder: tuple[str, list[tuple[str, str, str | None]]],
) -> None:
    url, seen = recorder
    closed = {"urls": [url], "mode": "wait", "c": 2, "n": 6, "task_prefix": "t"}
    closed |= {"timeout_s": 10, "headers": KEY}
    assert asyncio.run(closed_loop(closed))["ok"] == 6
    opened = {"urls": [url], "rate": 50, "duration_s": 0.2, "warmup_s": 0.0, "headers": KEY}
    opened |= {"paths": [("list", "/api/v1/agent/executions?limit=50")], "connections_per_url": 2}
    assert asyncio.run(open_loop(opened))["errors"] == 0
    assert {(method, path) for method, path, _ in seen} == {
        ("POST", EXECUTE),
        ("GET", "/api/v1/agent/executions?limit=50"),
    }
    assert len(seen) >= 6 + 5 and {auth for *_, auth in seen} == {"Bearer bench-key"}


def test_header_option_needs_a_name_and_a_value() -> None:
    assert header("Authorization:  Bearer k ") == ("Authorization", "Bearer k")
    for bad in ("Authorization", ": value", "Name:"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME: VALUE"):
            header(bad)
