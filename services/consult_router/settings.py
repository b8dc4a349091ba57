"""consult_router settings: the shared blocks plus routing's timers and limits."""

from __future__ import annotations

from pydantic import Field

from services.shared.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    # An offer not answered by then moves on to the next consultant.
    offer_timeout_seconds: float = Field(default=30.0, gt=0)
    # A case nobody has accepted by then raises `escalated`, and again every such period.
    escalate_after_seconds: float = Field(default=120.0, gt=0)
    # An accepted case without advice by then raises `escalated` (reason no_advice).
    advice_overdue_seconds: float = Field(default=900.0, gt=0)
    # Consults one consultant may hold (accepted, not yet advised) before no more offers.
    consult_limit: int = Field(default=1, ge=1, le=10)
    # The routing loop's safety-net poll; it is woken at once by changes that make work.
    router_poll_seconds: float = Field(default=2.0, gt=0)
    # A waiting case gains one priority level per step, so nothing starves.
    ageing_step_seconds: float = Field(default=300.0, ge=0)
    # A live socket refreshes its presence this often; a presence older than the stale
    # limit (a process that died) no longer counts.
    presence_heartbeat_seconds: float = Field(default=15.0, gt=0)
    presence_stale_seconds: float = Field(default=45.0, gt=0)
    # Messages a consultant's socket may send per second (a burst of twice that is let by).
    websocket_messages_per_second: float = Field(default=10.0, gt=0)
    # Consultants' message logs are kept this long for replays.
    message_retention_hours: float = Field(default=24.0, gt=0)
