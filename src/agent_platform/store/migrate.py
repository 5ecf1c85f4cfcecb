"""Run Alembic migrations from code (the CLI's `migrate`, and embedded mode at startup)."""

from __future__ import annotations

import asyncio

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from agent_platform.store.db import Database


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "agent_platform.store:migrations")
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


async def upgrade(db: Database) -> str:
    """Bring the schema to head; returns the head revision."""
    cfg = alembic_config(db.url)

    def _upgrade(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade)
    return head_revision(db.url)


def head_revision(url: str) -> str:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head() or ""


async def current_revision(db: Database) -> str | None:
    def _current(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with db.engine.connect() as conn:
        return await conn.run_sync(_current)


def upgrade_sync(url: str) -> str:
    async def _go() -> str:
        db = Database(url)
        try:
            return await upgrade(db)
        finally:
            await db.dispose()

    return asyncio.run(_go())
