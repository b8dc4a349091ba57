"""Tables owned by triage_api."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.shared.db.base import Base, JsonDocument
from services.shared.db.models.outbox import AutoIncrementId, InboxRowMixin, OutboxRowMixin


class TriageCase(Base):
    """A paramedic's request for advice: who asked, about whom, and where it stands."""

    __tablename__ = "triage_case"
    __table_args__ = (
        UniqueConstraint("paramedic_id", "idempotency_key"),
        Index("ix_triage_case_paramedic_created", "paramedic_id", "created_at", "id"),
        Index("ix_triage_case_created", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    reference: Mapped[str] = mapped_column(String(16), unique=True)
    paramedic_id: Mapped[str] = mapped_column(String(128))
    paramedic_name: Mapped[str] = mapped_column(String(200))
    idempotency_key: Mapped[str] = mapped_column(String(128))
    # A digest of the request body, to tell a retry from a reused key.
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int]
    call_category: Mapped[str] = mapped_column(String(4))
    cad_reference: Mapped[str] = mapped_column(String(64))
    callsign: Mapped[str] = mapped_column(String(32))
    location_lat: Mapped[float | None]
    location_lon: Mapped[float | None]
    age_years: Mapped[int | None]
    sex: Mapped[str] = mapped_column(String(8))
    nhs_number: Mapped[str | None] = mapped_column(String(10))
    presenting_complaint: Mapped[str] = mapped_column(String(32))
    requested_specialty: Mapped[str] = mapped_column(String(32))
    handover_format: Mapped[str | None] = mapped_column(String(8))
    handover_text: Mapped[str | None] = mapped_column(Text)
    proposed_disposition: Mapped[str | None] = mapped_column(String(16))
    reported_risk_flags: Mapped[list[str]] = mapped_column(JsonDocument)
    risk_flags: Mapped[list[str]] = mapped_column(JsonDocument)
    observations: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    news2: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    assigned_consultant_id: Mapped[str | None] = mapped_column(String(128))
    assigned_consultant_name: Mapped[str | None] = mapped_column(String(200))
    advice: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    cancel_reason: Mapped[str | None] = mapped_column(Text)
    advice_followed: Mapped[bool | None]
    not_followed_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Bumped on every change: receivers of case snapshots keep only the newest.
    version: Mapped[int] = mapped_column(default=1)
    # The newest consult-router status applied, so a late, older one is not replayed.
    router_version: Mapped[int] = mapped_column(default=0)
    # The seq of the newest event on the crew's stream.
    event_seq: Mapped[int] = mapped_column(default=0)


class TriageObservation(Base):
    """Every observation set recorded for a case, oldest first."""

    __tablename__ = "triage_observation"
    __table_args__ = (Index("ix_triage_observation_case", "case_id", "id"),)

    id: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("triage_case.id", ondelete="CASCADE"))
    recorded_at: Mapped[datetime]
    recorded_by: Mapped[str] = mapped_column(String(128))
    values: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    news2: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)


class TriageCaseEvent(Base):
    """The crew's stream of one case: numbered from 1, never rewritten."""

    __tablename__ = "triage_case_event"

    case_id: Mapped[str] = mapped_column(
        ForeignKey("triage_case.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(JsonDocument)


class TriageOutbox(OutboxRowMixin, Base):
    __tablename__ = "triage_outbox"


class TriageInbox(InboxRowMixin, Base):
    __tablename__ = "triage_inbox"
