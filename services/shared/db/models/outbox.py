"""Column sets for each service's transactional outbox and its receiving inbox.

Each service owns its own `<service>_outbox` and `<service>_inbox` tables (declared in the
service's model module from these mixins), so no service writes another's rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from services.shared.db.base import JsonDocument

# SQLite autoincrements only an INTEGER PRIMARY KEY.
AutoIncrementId = BigInteger().with_variant(Integer(), "sqlite")


class OutboxRowMixin:
    """One event for one destination, written in the transaction that caused it.

    `id` orders delivery; `event_id` is the receiver's deduplication key and is shared by
    the rows of one event sent to several destinations. No index on it: nothing here looks
    a row up by it (migration 0006 says why).
    """

    id: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0)
    # A delivery in progress holds a lease; a process that dies mid-delivery lets it lapse
    # and another picks the row up again.
    claimed_until: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    # Refused by the receiver as invalid: kept for inspection, never retried.
    dead_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:  # noqa: N805 -- a declared_attr takes the class
        name: str = cls.__tablename__  # type: ignore[attr-defined]
        # Only undelivered rows are ever scanned, so the index holds only those, in the
        # order deliveries claim them.
        pending = text("delivered_at IS NULL AND dead_at IS NULL")
        return (
            Index(
                f"ix_{name}_pending",
                "id",
                postgresql_where=pending,
                sqlite_where=pending,
            ),
        )


class InboxRowMixin:
    """An event this service has received and handled: the deduplication record."""

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime]
