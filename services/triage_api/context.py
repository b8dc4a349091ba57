"""What triage_api's services need besides a session, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter

from services.shared.clock import Clock
from services.shared.notify import Notifier
from services.shared.outbox import Outbox
from services.shared.seq_watch import SeqWatch
from services.triage_api import repository
from services.triage_api.settings import TriageSettings

# Wakes a case's live streams; the key is the case id.
STREAM_CHANNEL = "triage_case"


class TriageMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.cases_submitted = Counter(
            "reach_cases_submitted",
            "Cases submitted by paramedics.",
            ["specialty", "call_category"],
            registry=registry,
        )


@dataclass(frozen=True)
class TriageContext:
    settings: TriageSettings
    outbox: Outbox
    notifier: Notifier
    clock: Clock
    metrics: TriageMetrics
    # The case streams' safety net: one look at the cases for all this process's sockets.
    stream_watch: SeqWatch = field(
        default_factory=lambda: SeqWatch(repository.newest_event_seqs, what="the case streams")
    )
