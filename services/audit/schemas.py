"""audit's wire formats."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class ActorRead(BaseModel):
    sub: str | None
    role: str | None


class EntryRead(BaseModel):
    seq: int
    event_id: str
    type: str
    source: str
    subject_id: str
    actor: ActorRead
    occurred_at: datetime
    recorded_at: datetime
    details: dict[str, Any]
    hash: str


class TrailPage(BaseModel):
    events: list[EntryRead]
    # Pass as `after` for the next page; null when this page is the last.
    next_after: int | None


class VerifyRead(BaseModel):
    ok: bool
    events: int
    head: str
    first_bad_seq: int | None
    # Where this verification started (1 for a full one) and how many entries it read.
    checked_from: int
    checked: int
