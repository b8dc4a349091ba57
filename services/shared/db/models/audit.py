"""audit's tables: the hash-chained trail, its head and checkpoint, one disposition
record per case, and the inbox that makes every event count once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.shared.db.base import Base, JsonDocument
from services.shared.db.models.outbox import InboxRowMixin

Sequence = BigInteger().with_variant(Integer(), "sqlite")


class AuditEntry(Base):
    """One entry of the append-only trail: who did what to which case, and when.

    `hash` covers the entry's canonical content and the previous entry's hash, so an
    edited, deleted or inserted row breaks the chain from that entry on. `details` holds
    identifiers and vocabulary values only (an allow-list per event type), never clinical
    free text.
    """

    __tablename__ = "audit_entry"
    __table_args__ = (
        Index("ix_audit_entry_subject", "subject_id", "seq"),
        Index("ix_audit_entry_type", "event_type", "seq"),
    )

    seq: Mapped[int] = mapped_column(Sequence, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(64))
    actor_sub: Mapped[str | None] = mapped_column(String(128))
    actor_role: Mapped[str | None] = mapped_column(String(32))
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime]
    details: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The newest entry's seq and hash, in one row. Appending locks it, so entries are
    numbered without gaps whichever replica appends."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Sequence)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """Where the last verification ended: the next starts there, not at the beginning."""

    __tablename__ = "audit_checkpoint"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Sequence)
    hash: Mapped[str] = mapped_column(String(64))
    verified_at: Mapped[datetime]


class AuditDisposition(Base):
    """One record per case outcome, assembled from events in whatever order they come."""

    __tablename__ = "audit_disposition"
    __table_args__ = (
        Index("ix_audit_disposition_created", "created_at"),
        Index("ix_audit_disposition_advised", "advised_at"),
    )

    case_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reference: Mapped[str | None] = mapped_column(String(16))
    specialty: Mapped[str | None] = mapped_column(String(32))
    call_category: Mapped[str | None] = mapped_column(String(4))
    created_at: Mapped[datetime | None]
    accepted_at: Mapped[datetime | None]
    advised_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    consultant_id: Mapped[str | None] = mapped_column(String(128))
    disposition: Mapped[str | None] = mapped_column(String(16))
    pathway: Mapped[str | None] = mapped_column(String(32))
    risk_override: Mapped[bool] = mapped_column(default=False)
    followed: Mapped[bool | None]
    # Seconds from creation to acceptance and to advice, once both ends are known: kept
    # so reports and histograms aggregate in SQL alike on every database.
    accept_seconds: Mapped[float | None] = mapped_column(Float)
    advice_seconds: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime]


class AuditInbox(InboxRowMixin, Base):
    __tablename__ = "audit_inbox"
