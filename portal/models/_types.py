"""Column helpers shared by the models: server-generated UUIDs and timestamps."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import mapped_column

uuid_pk = Annotated[
    uuid.UUID,
    mapped_column(UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
]
created_at = Annotated[
    datetime, mapped_column(sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())
]
Timestamp = sa.DateTime(timezone=True)


def check_in(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    """A CHECK constraint limiting ``column`` to an enumeration, so the database refuses a bad value."""
    listed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({listed})", name=name)
