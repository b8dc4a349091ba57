"""Tables owned by consult_router: the rota, presence, the router's copy of each case,
offers, consults, each consultant's message log, outbox and inbox.

Every timer is a column here (an offer's `expires_at`, a case's `escalate_at`, a
consult's `advice_due_at`), read by the routing loop: a restart loses none.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from services.shared.db.base import Base, JsonDocument
from services.shared.db.models.outbox import InboxRowMixin, OutboxRowMixin


class ConsultConsultant(Base):
    """A consultant on the rota. `id` is the `sub` of their token."""

    __tablename__ = "consult_consultant"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    grade: Mapped[str] = mapped_column(String(64))
    specialties: Mapped[list[str]] = mapped_column(JsonDocument)
    # available / busy / away, as the consultant sets it.
    status: Mapped[str] = mapped_column(String(16))
    status_changed_at: Mapped[datetime]
    # When they last took a case: the longest idle is offered first.
    last_assigned_at: Mapped[datetime | None]
    # The seq of the newest message in their log.
    message_seq: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ConsultShift(Base):
    """A consultant on call for one specialty over [starts_at, ends_at), stored in UTC."""

    __tablename__ = "consult_shift"
    __table_args__ = (
        Index("ix_consult_shift_specialty_time", "specialty", "starts_at", "ends_at"),
        Index("ix_consult_shift_consultant", "consultant_id", "starts_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consultant_id: Mapped[str] = mapped_column(
        ForeignKey("consult_consultant.id", ondelete="CASCADE")
    )
    specialty: Mapped[str] = mapped_column(String(32))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    created_at: Mapped[datetime]


class ConsultConnection(Base):
    """One live websocket of a consultant on one process. A process that dies leaves its
    rows behind; they lapse when `last_seen_at` grows old."""

    __tablename__ = "consult_connection"
    __table_args__ = (Index("ix_consult_connection_consultant", "consultant_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consultant_id: Mapped[str] = mapped_column(
        ForeignKey("consult_consultant.id", ondelete="CASCADE")
    )
    replica_id: Mapped[str] = mapped_column(String(64))
    connected_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class ConsultCase(Base):
    """The router's copy of a case, from triage_api's snapshots, and its routing state."""

    __tablename__ = "consult_case"
    __table_args__ = (
        Index(
            "ix_consult_case_open",
            "status",
            "priority",
            "created_at",
            postgresql_where=text("status IN ('queued', 'offered')"),
            sqlite_where=text("status IN ('queued', 'offered')"),
        ),
        Index("ix_consult_case_escalate_at", "escalate_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # The newest triage_api snapshot applied.
    version: Mapped[int]
    reference: Mapped[str] = mapped_column(String(16))
    # queued, offered, accepted, advised, closed, cancelled
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int]
    specialty: Mapped[str] = mapped_column(String(32))
    call_category: Mapped[str] = mapped_column(String(4))
    news2_score: Mapped[int | None]
    snapshot: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    created_at: Mapped[datetime]
    received_at: Mapped[datetime]
    # Sequential offers until everyone eligible has been tried; then everyone at once.
    broadcast: Mapped[bool] = mapped_column(default=False)
    offer_round: Mapped[int] = mapped_column(default=1)
    # When the next "not accepted" escalation is due (None once accepted).
    escalate_at: Mapped[datetime | None]
    escalations: Mapped[int] = mapped_column(default=0)
    # Grows with every status sent to the peers, so they keep only the newest.
    router_version: Mapped[int] = mapped_column(default=0)
    accepted_at: Mapped[datetime | None]


class ConsultOffer(Base):
    """A case offered to one consultant until `expires_at`: open, then accepted,
    declined, expired or withdrawn."""

    __tablename__ = "consult_offer"
    __table_args__ = (
        Index(
            "ix_consult_offer_open",
            "expires_at",
            postgresql_where=text("state = 'open'"),
            sqlite_where=text("state = 'open'"),
        ),
        Index("ix_consult_offer_case", "case_id", "state"),
        Index("ix_consult_offer_consultant", "consultant_id", "state"),
        # A consultant is asked about one case at a time: the database refuses a second
        # open offer, whichever process or replica makes it.
        Index(
            "ix_consult_offer_one_open_per_consultant",
            "consultant_id",
            unique=True,
            postgresql_where=text("state = 'open'"),
            sqlite_where=text("state = 'open'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("consult_case.id", ondelete="CASCADE"))
    consultant_id: Mapped[str] = mapped_column(
        ForeignKey("consult_consultant.id", ondelete="CASCADE")
    )
    round: Mapped[int]
    broadcast: Mapped[bool]
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    close_reason: Mapped[str | None] = mapped_column(String(32))


class ConsultConsult(Base):
    """A consultant's acceptance of a case, and their advice. One per case: the unique
    constraint is what makes the first accept win, on any number of processes."""

    __tablename__ = "consult_consult"
    __table_args__ = (
        UniqueConstraint("case_id"),
        Index("ix_consult_consult_consultant", "consultant_id", "advised_at"),
        Index("ix_consult_consult_advice_due", "advice_due_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("consult_case.id", ondelete="CASCADE"))
    consultant_id: Mapped[str] = mapped_column(
        ForeignKey("consult_consultant.id", ondelete="CASCADE")
    )
    via: Mapped[str] = mapped_column(String(8))
    offer_id: Mapped[str | None] = mapped_column(String(36))
    accepted_at: Mapped[datetime]
    # When an accepted case without advice is escalated (None once advised or closed).
    advice_due_at: Mapped[datetime | None]
    advised_at: Mapped[datetime | None]
    disposition: Mapped[str | None] = mapped_column(String(16))
    pathway: Mapped[str | None] = mapped_column(String(32))
    advice: Mapped[str | None] = mapped_column(Text)
    safety_netting: Mapped[str | None] = mapped_column(Text)
    risk_override: Mapped[bool] = mapped_column(default=False)
    # The case was cancelled while the consultant held it.
    ended_at: Mapped[datetime | None]


class ConsultMessage(Base):
    """Every message the server sends one consultant, numbered: a reconnecting dashboard
    asks for everything after the last seq it saw."""

    __tablename__ = "consult_message"
    __table_args__ = (Index("ix_consult_message_created", "created_at"),)

    consultant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    created_at: Mapped[datetime]


class ConsultOutbox(OutboxRowMixin, Base):
    __tablename__ = "consult_outbox"


class ConsultInbox(InboxRowMixin, Base):
    __tablename__ = "consult_inbox"
