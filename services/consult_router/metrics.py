"""Gauges read from the database at scrape time, so every replica reports the truth."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router.context import RouterContext
from services.consult_router.repository import cases as case_repo
from services.consult_router.repository import rota as rota_repo
from services.shared.domain.vocabulary import ConsultantStatus, Specialty


async def refresh_gauges(session: AsyncSession, ctx: RouterContext) -> None:
    now = ctx.clock.now()
    metrics = ctx.metrics
    depths = {
        specialty: (count, oldest)
        for specialty, count, oldest in await case_repo.queue_depths(session, now=now)
    }
    on_shift = await rota_repo.on_call_at(session, specialties=[str(s) for s in Specialty], at=now)
    available: dict[str, set[str]] = {}
    rostered: dict[str, set[str]] = {}
    for entry in on_shift:
        rostered.setdefault(entry.specialty, set()).add(entry.consultant_id)
        if entry.status == ConsultantStatus.AVAILABLE:
            available.setdefault(entry.specialty, set()).add(entry.consultant_id)
    for specialty in Specialty:
        count, oldest = depths.get(str(specialty), (0, None))
        metrics.queue_depth.labels(str(specialty)).set(count)
        waited = 0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0)
        metrics.oldest_waiting.labels(str(specialty)).set(waited)
        metrics.consultants_available.labels(str(specialty)).set(
            len(available.get(str(specialty), ()))
        )
        metrics.consultants_on_shift.labels(str(specialty)).set(
            len(rostered.get(str(specialty), ()))
        )
