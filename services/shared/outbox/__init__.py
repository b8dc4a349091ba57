"""The transactional outbox: events commit with the change that caused them, a delivery
loop sends them to peers with retries and back-off, and receivers deduplicate by event id.
"""

from services.shared.outbox.delivery import OutboxDelivery, OutboxMetrics
from services.shared.outbox.inbox import (
    BatchHandler,
    EventHandler,
    LocalReceiver,
    events_router,
    install_inbox,
    receive_events,
)
from services.shared.outbox.writer import Outbox

__all__ = [
    "BatchHandler",
    "EventHandler",
    "LocalReceiver",
    "Outbox",
    "OutboxDelivery",
    "OutboxMetrics",
    "events_router",
    "install_inbox",
    "receive_events",
]
