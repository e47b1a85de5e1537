"""Where retention stands, per tenant and rule (issue 13: every table has a retention rule).

- ``RetentionMark``: for a rule that walks its table in order (state versions, in ``txid`` order), the
  position it has passed (``position``, JSON), so a pass starts where the last one stopped instead of
  re-reading what it kept; ``deleted_txid``, the highest feed position it deleted (a ``follow`` cursor
  below it may have missed versions and is refused); and what the last pass did, for ``garrison stats``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import BigInteger, Column, DateTime, String, Table
from sqlmodel import Field, SQLModel

from garrison.models.tables import _json, _when


class RetentionMark(SQLModel, table=True):
    __tablename__ = "garrison_retention"

    tenant: str = Field(sa_column=Column(String(64), primary_key=True))
    rule: str = Field(sa_column=Column(String(64), primary_key=True))
    position: Any = _json()
    deleted_txid: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    deleted: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    last_run_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    updated_at: datetime = _when()


RETENTION = cast(Table, RetentionMark.__table__)  # type: ignore[attr-defined]
