"""What consult_router's services need besides a session, built once by the lifespan."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.consult_router.queue_feed import QueueFeed
from services.consult_router.queue_lines import QueueLines
from services.consult_router.recent_messages import RecentMessages
from services.consult_router.repository import messages as message_repo
from services.consult_router.settings import RouterSettings
from services.shared.clock import Clock
from services.shared.notify import Notifier
from services.shared.outbox import Outbox
from services.shared.seq_watch import SeqWatch

# Wakes the routing loop: a case to route, an offer to expire, a consultant free.
WORK_CHANNEL = "router_work"
# Wakes a consultant's sockets to read their message log; the key is the consultant id.
CONSULTANT_CHANNEL = "router_consultant"
# The open queue changed: dashboards showing it refresh.
QUEUE_CHANNEL = "router_queue"

TIME_TO_ACCEPT_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.offers = Counter(
            "reach_offers",
            "Offers by how they ended: made, accepted, declined, expired, withdrawn.",
            ["outcome"],
            registry=registry,
        )
        self.escalations = Counter(
            "reach_escalations",
            "Escalations: a case not accepted in time, or accepted without advice in time.",
            ["reason"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "reach_queue_depth",
            "Open cases not yet accepted, by requested specialty.",
            ["specialty"],
            registry=registry,
        )
        self.oldest_waiting = Gauge(
            "reach_oldest_waiting_seconds",
            "How long the longest-waiting open case has waited, by specialty.",
            ["specialty"],
            registry=registry,
        )
        self.consultants_available = Gauge(
            "reach_consultants_available",
            "Consultants on shift now and available, by specialty.",
            ["specialty"],
            registry=registry,
        )
        self.consultants_on_shift = Gauge(
            "reach_consultants_on_shift",
            "Consultants on shift now, whatever their status, by specialty: 0 is a rota gap.",
            ["specialty"],
            registry=registry,
        )
        self.time_to_accept = Histogram(
            "reach_time_to_accept_seconds",
            "From a case's creation to a consultant accepting it.",
            ["specialty"],
            buckets=TIME_TO_ACCEPT_BUCKETS,
            registry=registry,
        )


def new_replica_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RouterContext:
    settings: RouterSettings
    outbox: Outbox
    notifier: Notifier
    clock: Clock
    metrics: RouterMetrics
    # Names this process's presence rows, so a dead process's rows can be told apart.
    replica_id: str = field(default_factory=new_replica_id)
    # The open queue, read once per change and shared by this process's dashboards.
    queue_feed: QueueFeed = field(default_factory=QueueFeed)
    # The queue's reads, each case's fixed line kept between them.
    queue_lines: QueueLines = field(default_factory=QueueLines)
    # Consultant messages this process logged lately, for its own sockets to send.
    recent_messages: RecentMessages = field(default_factory=RecentMessages)
    # Connections whose socket closed but whose row could not be removed then (the
    # database away): the heartbeat removes them, or it would keep them looking open.
    unsaid_goodbyes: set[str] = field(default_factory=set)
    # The streams' safety net: one look at the log for all this process's sockets.
    log_watch: SeqWatch = field(
        default_factory=lambda: SeqWatch(message_repo.newest_seqs, what="the message log")
    )
