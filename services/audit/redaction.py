"""What of an event may enter the trail: identifiers, actors, times and vocabulary values,
by an allow-list per event type. Anything else — above all clinical free text — is left
out, whatever a sender puts in an event."""

from __future__ import annotations

from typing import Any

from services.shared.schemas.events import Event, EventType

_CASE = (
    "reference", "status", "version", "priority", "specialty", "call_category",
    "presenting_complaint", "news2_score", "news2_risk", "red_flag", "risk_flags",
    "proposed_disposition", "followed",
)  # fmt: skip
_CONSULT = (
    "router_version", "consult_id", "specialty", "consultant_id", "via", "disposition",
    "pathway", "risk_override", "reason", "waited_seconds", "case_reference", "call_category",
)  # fmt: skip
_OFFER = ("offer_id", "consultant_id", "specialty", "expires_at", "broadcast", "reason")

ALLOWED: dict[str, tuple[str, ...]] = {
    EventType.CASE_SUBMITTED: _CASE,
    EventType.CASE_UPDATED: _CASE,
    EventType.CASE_CANCELLED: _CASE,
    EventType.CASE_ACKNOWLEDGED: _CASE,
    EventType.CASE_VIEWED: ("reference", "via"),
    EventType.CONSULT_QUEUED: _CONSULT,
    EventType.CONSULT_OFFERED: _CONSULT,
    EventType.CONSULT_ACCEPTED: _CONSULT,
    EventType.CONSULT_ADVISED: _CONSULT,
    EventType.CONSULT_ESCALATED: _CONSULT,
    EventType.OFFER_MADE: _OFFER,
    EventType.OFFER_DECLINED: _OFFER,
    EventType.OFFER_EXPIRED: _OFFER,
    EventType.OFFER_WITHDRAWN: _OFFER,
}

# Allowed values are identifiers and vocabulary words: short by nature. A longer string
# in an allowed field is not what the field is for, and is cut rather than stored.
MAX_TEXT = 64
MAX_LIST = 16


def details_of(event: Event) -> dict[str, Any]:
    data = dict(event.data)
    consultant = data.get("consultant")
    if isinstance(consultant, dict) and "consultant_id" not in data:
        data["consultant_id"] = consultant.get("id")
    allowed = ALLOWED.get(event.type, ())
    return {key: _scalar(data[key]) for key in allowed if data.get(key) is not None}


def _scalar(value: Any) -> Any:
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, list):
        return [_scalar(item) for item in value[:MAX_LIST] if isinstance(item, str | int | bool)]
    return None
