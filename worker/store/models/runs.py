"""The worker's own record: one row per daily run and the small facts it keeps about itself."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, Date, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from worker.store.models.base import Base, UTCDateTime


class DailyRun(Base):
    """One row per business date: the scan for a date is claimed once."""

    __tablename__ = "daily_runs"

    business_date: Mapped[date] = mapped_column(Date, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    summary: Mapped[dict | None] = mapped_column(JSON)


class WorkerState(Base):
    """Small facts the worker keeps about itself, such as the schedule its dates were computed with."""

    __tablename__ = "worker_state"

    key: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
