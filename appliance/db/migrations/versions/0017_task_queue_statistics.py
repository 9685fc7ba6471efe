"""Autovacuum and ANALYZE of the task table by rows changed, not by its size (PostgreSQL).

The table is a queue in front of a growing history: with the default 10 % scale factor a burst of tasks
on a large history is not analyzed for a long time, and the claim's plan, chosen for a queue the planner
believes empty, then walks every live task for every live task (470 ms a claim with 1,700 queued).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

SETTINGS = {
    "autovacuum_analyze_scale_factor": "0",
    "autovacuum_analyze_threshold": "2000",
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "10000",
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE tasks SET (" + ", ".join(f"{k} = {v}" for k, v in SETTINGS.items()) + ")")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE tasks RESET (" + ", ".join(SETTINGS) + ")")
