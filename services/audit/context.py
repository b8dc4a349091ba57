"""What audit's routes and loops need besides a session, built once by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fastapi import Request

from services.audit.metrics import AuditCollector
from services.audit.settings import AuditSettings
from services.audit.verification import Verdict
from services.shared.clock import Clock


@dataclass(frozen=True)
class AuditContext:
    settings: AuditSettings
    clock: Clock
    collector: AuditCollector

    def record_verdict(self, verdict: Verdict, *, at: datetime) -> None:
        self.collector.snapshot.chain_ok = verdict.ok
        self.collector.snapshot.verified_at = at


async def get_context(request: Request) -> AuditContext:
    context: AuditContext = request.app.state.audit
    return context
