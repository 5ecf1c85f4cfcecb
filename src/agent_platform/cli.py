"""`agent-platform`: serve (embedded) | api | worker | migrate."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Annotated, Any

import typer

from agent_platform.config import ConfigError, Settings, load_settings

app = typer.Typer(
    help="Agent Platform: a multi-tenant AI agent runtime (smolagents CodeAgent over HTTPS).",
    no_args_is_help=True,
    add_completion=False,
)

HostOpt = Annotated[str | None, typer.Option(help="Address to listen on (env API_HOST).")]
PortOpt = Annotated[int | None, typer.Option(help="Port to listen on (env API_PORT).")]


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        typer.echo(f"agent-platform: {exc}", err=True)
        raise typer.Exit(2) from None


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_exposure(host: str, allow_open: bool) -> str:
    """There is no API-key auth yet: exposing the API beyond loopback must be deliberate."""
    if _is_loopback(host):
        return "open to loopback only (no API key needed)"
    if not allow_open:
        typer.echo(
            f"agent-platform: refusing to listen on {host} without authentication; "
            "use 127.0.0.1, or pass --allow-unauthenticated behind a gateway that authenticates",
            err=True,
        )
        raise typer.Exit(2)
    return "OPEN TO THE NETWORK WITHOUT AUTHENTICATION (--allow-unauthenticated)"


def _uvicorn(app_or_factory: object, host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    uvicorn.run(
        app_or_factory,  # type: ignore[arg-type]
        host=host,
        port=port,
        workers=workers,
        factory=isinstance(app_or_factory, str),
        log_level="warning",
        access_log=False,
        proxy_headers=True,
        server_header=False,
    )


@app.command()
def serve(
    host: HostOpt = None,
    port: PortOpt = None,
    data_dir: Annotated[str | None, typer.Option(help="Where the SQLite file lives.")] = None,
    allow_unauthenticated: Annotated[bool, typer.Option()] = False,
) -> None:
    """Run everything in one process (embedded mode): API + worker, SQLite, no Redis needed."""
    settings = _settings(api_host=host, api_port=port, data_dir=data_dir)
    _logging(settings)
    exposure = _check_exposure(settings.api_host, allow_unauthenticated)
    from agent_platform.app import create_app
    from agent_platform.container import Platform

    platform = Platform(settings)
    typer.echo(
        f"Agent Platform ({platform.mode} mode) listening on "
        f"http://{settings.api_host}:{settings.api_port}, {exposure}\n"
        f"  database: {settings.resolved_database_url}\n"
        f"  API docs: http://{settings.api_host}:{settings.api_port}/docs"
    )
    for note in platform.providers.startup_warnings():
        typer.echo(f"  note: {note}")
    _uvicorn(
        create_app(settings, run_worker=True, migrate_schema=True, platform=platform),
        settings.api_host,
        settings.api_port,
    )


def api_factory() -> object:
    """uvicorn factory for `agent-platform api --workers N` (each process builds its app)."""
    from agent_platform.app import create_app

    settings = load_settings()
    _logging(settings)
    return create_app(settings, run_worker=False, migrate_schema=False)


@app.command()
def api(
    host: HostOpt = None,
    port: PortOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="HTTP server processes.")] = 1,
    allow_unauthenticated: Annotated[bool, typer.Option()] = False,
) -> None:
    """Run the HTTP API only (server mode: PostgreSQL + Redis; workers run separately)."""
    settings = _settings(api_host=host, api_port=port)
    _logging(settings)
    exposure = _check_exposure(settings.api_host, allow_unauthenticated)
    typer.echo(
        f"Agent Platform API listening on http://{settings.api_host}:{settings.api_port} "
        f"({workers} process(es)), {exposure}"
    )
    if host is not None or port is not None:
        import os

        os.environ["API_HOST"], os.environ["API_PORT"] = settings.api_host, str(settings.api_port)
    _uvicorn("agent_platform.cli:api_factory", settings.api_host, settings.api_port, workers)


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Executions run at once (env WORKER_CONCURRENCY).")
    ] = None,
    burst: Annotated[bool, typer.Option(help="Drain the queue, then exit.")] = False,
    grace: Annotated[float, typer.Option(help="Seconds to let running work end on SIGTERM.")] = 30,
) -> None:
    """Run a worker: claims queued executions and runs their agents."""
    settings = _settings()
    _logging(settings)
    _run_loop(_run_worker(settings, concurrency, burst, grace))


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run` on uvloop where it is installed (uvicorn[standard] brings it, as the
    api's loop): the worker lives on many small I/O callbacks and thread hand-offs."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


async def _run_worker(
    settings: Settings, concurrency: int | None, burst: bool, grace_s: float
) -> None:
    from agent_platform.app import freeze_startup_heap
    from agent_platform.container import Platform

    platform = Platform(settings)
    await platform.start(migrate_schema=platform.mode == "embedded")
    for note in platform.providers.startup_warnings():
        logging.getLogger("agent_platform").warning(note)
    await platform.start_sandbox()
    worker = platform.make_worker(concurrency=concurrency)
    freeze_startup_heap()
    logging.getLogger("agent_platform").info(
        "worker %s started (%d slots, sandbox: %s)",
        worker.worker_id,
        worker.concurrency,
        platform.sandbox_level,
    )
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    run = asyncio.create_task(worker.run(burst=burst))
    waiter = asyncio.create_task(stopping.wait())
    await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    await platform.close(grace_s=grace_s)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic) to this version."""
    settings = _settings()
    from agent_platform.store.migrate import upgrade_sync

    revision = upgrade_sync(settings.resolved_database_url)
    typer.echo(f"database schema is at revision {revision}")


if __name__ == "__main__":
    app()
