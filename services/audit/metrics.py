"""audit's metrics, computed from stored records so they survive restarts and agree on
every replica: dispositions by outcome, the redirection ratio over three windows, the
time to advice, and the state of the trail.

Values are read from the database when Prometheus scrapes (`refresh`), and a custom
collector reports that snapshot. Labels are vocabulary values only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.audit.reports import REDIRECTED
from services.shared.db.models import AuditChainHead, AuditDisposition

WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
ADVICE_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0)


@dataclass
class Snapshot:
    dispositions: dict[tuple[str, str, str], int] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    # specialty -> (cumulative counts per bucket, count, sum)
    advice: dict[str, tuple[list[int], int, float]] = field(default_factory=dict)
    entries: int = 0
    chain_ok: bool | None = None
    verified_at: datetime | None = None


class AuditCollector(Collector):
    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        snap = self.snapshot
        dispositions = CounterMetricFamily(
            "reach_dispositions",
            "Case outcomes recorded, by disposition, pathway and specialty.",
            labels=["disposition", "pathway", "specialty"],
        )
        for labels, count in sorted(snap.dispositions.items()):
            dispositions.add_metric(list(labels), count)
        yield dispositions
        ratio = GaugeMetricFamily(
            "reach_redirection_ratio",
            "Share of cases with a disposition that avoided the ED (redirect or home), by "
            "window of advice time; absent for a window without dispositions.",
            labels=["window"],
        )
        for window, value in sorted(snap.ratios.items()):
            ratio.add_metric([window], value)
        yield ratio
        advice = HistogramMetricFamily(
            "reach_time_to_advice_seconds",
            "From a case's creation to its disposition being recorded, by specialty.",
            labels=["specialty"],
        )
        for specialty, (cumulative, count, total) in sorted(snap.advice.items()):
            buckets = [(_le(b), c) for b, c in zip(ADVICE_BUCKETS, cumulative, strict=True)]
            advice.add_metric([specialty], [*buckets, ("+Inf", count)], total)
        yield advice
        yield GaugeMetricFamily(
            "reach_audit_entries", "Entries in the audit trail.", value=snap.entries
        )
        if snap.chain_ok is not None:
            yield GaugeMetricFamily(
                "reach_audit_chain_ok",
                "1 when the last verification of the audit trail passed, 0 when it failed.",
                value=1 if snap.chain_ok else 0,
            )
        if snap.verified_at is not None:
            yield GaugeMetricFamily(
                "reach_audit_last_verified_timestamp_seconds",
                "When the audit trail was last verified.",
                value=snap.verified_at.timestamp(),
            )


def _le(bound: float) -> str:
    return str(bound)


def register(registry: CollectorRegistry) -> AuditCollector:
    collector = AuditCollector()
    registry.register(collector)
    return collector


async def refresh(session: AsyncSession, collector: AuditCollector, *, now: datetime) -> None:
    snap = collector.snapshot
    d = AuditDisposition
    rows = await session.execute(
        select(d.disposition, d.pathway, d.specialty, func.count())
        .where(d.disposition.is_not(None))
        .group_by(d.disposition, d.pathway, d.specialty)
    )
    snap.dispositions = {
        (str(disposition), pathway or "none", specialty or "unknown"): int(count)
        for disposition, pathway, specialty, count in rows
    }
    ratios: dict[str, float] = {}
    for window, span in WINDOWS.items():
        redirected = func.sum(case((d.disposition.in_(REDIRECTED), 1), else_=0))
        decided, away = (
            await session.execute(
                select(func.count(), redirected).where(
                    d.disposition.is_not(None), d.advised_at >= now - span
                )
            )
        ).one()
        if decided:
            ratios[window] = (away or 0) / decided
    snap.ratios = ratios
    bucket_counts = [
        func.sum(case((d.advice_seconds <= bound, 1), else_=0)) for bound in ADVICE_BUCKETS
    ]
    rows = await session.execute(
        select(d.specialty, func.count(), func.sum(d.advice_seconds), *bucket_counts)
        .where(d.advice_seconds.is_not(None))
        .group_by(d.specialty)
    )
    advice: dict[str, tuple[list[int], int, float]] = {}
    for row in rows:
        values: tuple[Any, ...] = tuple(row)
        specialty, count, total, counts = values[0], values[1], values[2], values[3:]
        advice[str(specialty or "unknown")] = (
            [int(c or 0) for c in counts],
            int(count),
            float(total or 0),
        )
    snap.advice = advice
    head = await session.get(AuditChainHead, 1)
    snap.entries = head.seq if head else 0
