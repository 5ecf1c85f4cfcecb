"""The reaper's index of running executions no longer serves lookups by id.

Fenced on `status = 'running'`, the worker's step writes and ends could use the partial
index of running rows, which the planner (with statistics taken while few ran) prefers to
the primary key: every write then scanned all running executions. Its predicate now also
requires `lease_until IS NOT NULL`, which the reaper's `lease_until < now` implies and a
lookup by id does not.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _recreate(where: str) -> None:
    op.drop_index("ix_executions_running_lease", table_name="executions")
    op.create_index(
        "ix_executions_running_lease",
        "executions",
        ["lease_until"],
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )


def upgrade() -> None:
    _recreate("status = 'running' AND lease_until IS NOT NULL")


def downgrade() -> None:
    _recreate("status = 'running'")
