"""The transactional outbox: events commit with the change that caused them, a delivery
loop sends them to peers with retries and back-off, and receivers deduplicate by event id.
"""

from services.shared.outbox.delivery import OutboxDelivery, OutboxMetrics
from services.shared.outbox.inbox import (
    BatchHandler,
    EventHandler,
    events_router,
    receive_events,
)
from services.shared.outbox.writer import Outbox

__all__ = [
    "BatchHandler",
    "EventHandler",
    "Outbox",
    "OutboxDelivery",
    "OutboxMetrics",
    "events_router",
    "receive_events",
]
