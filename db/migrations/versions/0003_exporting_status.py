"""jobs.status `exporting`: a job whose results are written and being sent (issue 21)

Until now such a job stayed `running`, so the sweep could take a long export for a lost
worker and run the method again. A `running` job that already has its SR written (its
results folder is complete) is moved to `exporting`; downgrade moves them back.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

jobs = sa.table("jobs", sa.column("status", sa.String), sa.column("sr_sop_instance_uid", sa.String))


def upgrade() -> None:
    op.execute(jobs.update().where(jobs.c.status == "running", jobs.c.sr_sop_instance_uid.is_not(None))
               .values(status="exporting"))


def downgrade() -> None:
    op.execute(jobs.update().where(jobs.c.status == "exporting").values(status="running"))
