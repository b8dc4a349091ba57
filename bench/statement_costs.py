"""What a step of a case's path costs in CPU, written the way reach writes it beside the
way it was written before, in one process, on SQLite and on PostgreSQL: the two ways take
turns, a few hundred times each per round, so a drift in the machine's speed falls on
both. Each figure is the process's CPU (user and system) for the statements alone (the
transaction begun, and the rows built, off the clock), in microseconds a step; the ratio
is before / now (above 1: now is cheaper). On PostgreSQL served from this machine, beside
it: the database server's CPU for the same statements (the time its backend process spent
on a CPU, from /proc), which is a share of the same machine.

Why beside the whole-process benchmarks: a step or two fewer on a case's path is a few
per cent of its CPU, and on a shared VM the whole process's CPU moves more than that from
minute to minute (two processes of one build, side by side: +-15% a slice). Measured
apart, the step's own cost shows.

- a submitted case: read for it under a lock, then insert it (before) / insert it unless
  there, returning whether it was (`insert_cases_if_new`, now);
- an offer: look for the consultant's open offers, then insert (before) / one insert
  that carries the look (`insert_offer_unless_held`, now; on PostgreSQL routing now sends
  it with the consultant's message about it, `insert_offer_and_message_unless_held`,
  which `bench.delivery_passes` counts);
- a cancellation's offers: read the case's open offers, then close each (before) / close
  them in one statement that returns them (`close_open_offers_of_case`, now); the case
  has one open offer, as a case offered to one consultant at a time has;
- outbox and wake-ups (PostgreSQL only): a commit's four outbox rows and the
  three `pg_notify` calls of a new case's hand-over, as an insert and then a statement
  of the notifications, the pairs as array parameters (before) / as one statement, the
  rows riding in it as a data-modifying `WITH`, as one JSON document (`write_pending`
  with `notify_at_commit`, now);
- a batch's first rows (PostgreSQL only): what a group commit of four new cases writes
  after the cases: each case's first observation set and stream event, and its two
  outbox rows with their wake-up, as an insert of each row (before) / riding with the
  outbox rows in the notifying statement (`insert_first_rows`, now);
- a batch of new cases (PostgreSQL only): a group commit's cases, one to eight a batch
  as arrivals make them, inserted unless their keys are taken (as the router inserts the
  cases it is given, and a batch whose keys must be told apart is written), as a
  multi-row `VALUES`, a statement text for each size of batch (before) / as one JSON
  document, one text whatever the size (`insert_cases_if_new`, now);
- a batch written at its commit (PostgreSQL only): what a group commit of one to eight
  new cases writes on PostgreSQL, all in the statement that wakes the delivery lanes (the
  cases, each one's first observation set, stream event and two outbox rows, and the
  wake-ups): each insert's rows as one array a column, as they rode before / as one JSON
  document an insert (`services/shared/db/rows_as_json.py`, now);
- a routing look (PostgreSQL only): the routing loop's read of the queue, woken by a
  change, in a transaction of its own (before) / alone, in no transaction (`reads_alone`,
  now); it opens its own session, as the loop does, and counts the BEGIN and COMMIT;
- a posting pass (PostgreSQL only): what an outbox delivery to peers over HTTP writes
  around its posts (split services), for a commit's eight rows to two peers: the claim
  read, its lease written and committed, then each peer's delivery recorded in a
  transaction (before) / the claim leasing as it takes, and each record, one statement
  alone, in no transaction (`write_alone`, now); its own sessions, BEGIN and COMMIT
  counted.

    python -m bench.statement_costs [--steps 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import CollectorRegistry
from sqlalchemy import (
    Insert,
    Select,
    String,
    TableClause,
    Text,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from bench.harness import (
    PYTHON,
    ROOT,
    SERVER_CPU,
    base_env,
    databases,
    fail,
    is_postgres_process,
    machine_report,
    migrate,
    pinned,
)
from services.consult_router.cases import new_case_row
from services.consult_router.context import RouterContext
from services.consult_router.repository import cases as case_repo
from services.consult_router.routing import open_cases_to_route
from services.consult_router.settings import RouterSettings
from services.shared.clients.peers import PeerClient
from services.shared.clock import ManualClock
from services.shared.db.base import table_of
from services.shared.db.engine import create_engine, is_postgres
from services.shared.db.models import (
    ConsultCase,
    ConsultConsultant,
    ConsultOffer,
    ConsultOutbox,
    TriageCase,
    TriageCaseEvent,
    TriageObservation,
    TriageOutbox,
)
from services.shared.db.session import (
    _NOTIFY_ALL,
    SessionMaker,
    create_sessionmaker,
    insert_at_commit,
    notify_at_commit,
    reads_alone,
    unit_of_work,
    write_alone,
    write_pending,
)
from services.shared.domain.reference import new_case_reference
from services.shared.ids import new_id
from services.shared.notify import LocalNotifier
from services.shared.outbox import Outbox, OutboxDelivery
from services.shared.outbox.delivery import OutboxMetrics, _Sorted, by_destination
from services.shared.schemas.cases import CaseSnapshot
from services.shared.settings import OutboxSettings
from services.triage_api import repository as triage_repo
from tests.consult_router.conftest import snapshot

DATABASE = "[database]"  # a result's label for the database server's CPU
# Steps that open a session of their own: the database's CPU is read from the step's
# session's backend, which does not serve them, so none is read for them.
OWN_SESSION = {"a routing look", "a posting pass"}
Step = Callable[[AsyncSession, dict[str, Any]], Awaitable[None]]
# The offer as it was written before the unique index: a plain insert.
_PLAIN_OFFER_INSERT = insert(table_of(ConsultOffer))
# What a new case's hand-over wakes at its commit: the consultant offered it, the
# dashboards' queue, and the router's outbox delivery.
_WAKE_UPS = [("reach_consultant", "dr-bench"), ("reach_queue", ""), ("reach_outbox", "audit")]
_OUTBOX_INSERT = insert(table_of(ConsultOutbox))
_TRIAGE_OUTBOX_INSERT = insert(table_of(TriageOutbox))
# New cases' first rows as they were written before they rode with the outbox.
_OBSERVATION_INSERT = insert(table_of(TriageObservation))
_CASE_EVENT_INSERT = insert(table_of(TriageCaseEvent))
OBSERVATIONS = {
    "respiration_rate": 22, "spo2": 95, "spo2_scale": 1, "on_oxygen": False,
    "systolic_bp": 115, "pulse": 95, "consciousness": "A", "temperature": 38.2,
}  # fmt: skip
NEWS2 = {
    "score": 5, "risk": "medium", "red_flag": False, "scale": 1,
    "subscores": {"respiration_rate": 2, "spo2": 1, "air_or_oxygen": 0, "systolic_bp": 1,
                  "pulse": 1, "consciousness": 0, "temperature": 1},
}  # fmt: skip


def _triage_case_row(case_id: str, reference: str, now: datetime) -> dict[str, Any]:
    """A new case's whole row, as the triage service writes it at a submission."""
    return {
        "id": case_id, "reference": reference, "paramedic_id": "crew-bench",
        "paramedic_name": "Crew Bench", "idempotency_key": case_id,
        "request_fingerprint": "f", "status": "queued", "priority": 2,
        "call_category": "C2", "cad_reference": "CAD-1", "callsign": "NE23",
        "location_lat": None, "location_lon": None, "age_years": 81, "sex": "female",
        "nhs_number": None, "presenting_complaint": "fall",
        "requested_specialty": "frailty", "handover_format": None,
        "handover_text": None, "proposed_disposition": None,
        "reported_risk_flags": [], "risk_flags": [], "observations": OBSERVATIONS,
        "news2": NEWS2, "created_at": now, "updated_at": now, "version": 1,
        "router_version": 0, "event_seq": 1, "assigned_consultant_id": None,
        "assigned_consultant_name": None, "advice": None, "cancel_reason": None,
        "advice_followed": None, "not_followed_reason": None,
    }  # fmt: skip


def _first_rows(
    case_id: str, now: datetime, *, seq: int, news: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """A new case's first observation set, its stream event, and its outbox rows carrying
    `news` to the router and audit, as a group commit writes them."""
    observation = {
        "case_id": case_id, "recorded_at": now, "recorded_by": "crew-bench",
        "values": {**OBSERVATIONS, "taken_at": now.isoformat()}, "news2": NEWS2,
    }  # fmt: skip
    event = {
        "case_id": case_id, "seq": seq, "type": "queued", "at": now,
        "data": {"status": "queued", "priority": 2, "news2": NEWS2},
    }  # fmt: skip
    outbox = [
        {"event_id": news["id"], "event_type": "case.submitted", "destination": destination,
         "payload": news, "created_at": now, "next_attempt_at": now, "attempts": 0}
        for destination in ("consult_router", "audit")
    ]  # fmt: skip
    return observation, event, outbox


def _rows_from_arrays(
    table: TableClause, columns: Sequence[str], *, prefix: str = ""
) -> Select[Any]:
    """Rows as one array parameter a column (`unnest ... WITH ORDINALITY`): how rows rode
    in the notifying statement before they went as one JSON document."""
    arrays = [
        bindparam(f"{prefix}{column}", type_=ARRAY(_element_type(table.c[column]), dimensions=1))
        for column in columns
    ]
    unnested = (
        func.unnest(*arrays).table_valued(*columns, with_ordinality="position").render_derived()
    )
    return select(*(unnested.c[column] for column in columns)).order_by(unnested.c.position)


def _array_parameters(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], *, prefix: str = ""
) -> dict[str, Any]:
    return {f"{prefix}{column}": [row[column] for row in rows] for column in columns}


def _element_type(column: Any) -> Any:
    # A string without its length: a cast to `varchar(n)` would cut a longer value short.
    return Text() if isinstance(column.type, String) else column.type


# New cases inserted unless taken as a multi-row `VALUES`, as they were before they went
# as one JSON document.
_CASES_AS_VALUES = (
    postgresql.insert(table_of(TriageCase)).on_conflict_do_nothing().returning(TriageCase.id)
)
# The notifying statement with each shape of inserts riding in it as arrays.
_RIDING_AS_ARRAYS: dict[tuple[tuple[str, ...], ...], Any] = {}
# The notifications as they were sent before the outbox's rows rode with them.
_NOTIFY_ALONE = text(
    "SELECT pg_notify(pending.channel, pending.key)"
    " FROM unnest(:channels, :keys) AS pending(channel, key)"
).bindparams(bindparam("channels", type_=ARRAY(Text)), bindparam("keys", type_=ARRAY(Text)))


class Steps:
    """Each way of each step, on one database, and what they need seeded."""

    def __init__(self, maker: SessionMaker) -> None:
        self.clock = ManualClock(datetime(2026, 12, 3, 9, 0, tzinfo=UTC))
        # The router's own settings, defaults and all: a stand-in listing only the fields
        # a step read at the time broke the script once a step read another.
        settings = RouterSettings.model_construct(escalate_after_seconds=600)
        self.ctx = cast(RouterContext, SimpleNamespace(clock=self.clock, settings=settings))
        self.cases: list[str] = []
        self.triage_cases: list[str] = []
        self.event_seq = 1
        self.maker = maker
        self.delivery = _posting_delivery(maker, self.clock)

    def new_case(self, _n: int) -> dict[str, Any]:
        return new_case_row(self.ctx, CaseSnapshot.model_validate(snapshot(self.clock)))

    def offer(self, n: int) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "id": new_id(), "case_id": self.cases[n % len(self.cases)],
            "consultant_id": "dr-bench", "round": 1, "broadcast": False, "state": "open",
            "created_at": now, "expires_at": now + timedelta(minutes=2), "closed_at": None,
            "close_reason": None,
        }  # fmt: skip

    @staticmethod
    async def case_read_then_insert(session: AsyncSession, row: dict[str, Any]) -> None:
        found = await case_repo.get_cases(session, {row["id"]}, for_update=True)
        if row["id"] not in found:
            await case_repo.insert_cases(session, [row])

    @staticmethod
    async def case_insert_if_new(session: AsyncSession, row: dict[str, Any]) -> None:
        await case_repo.insert_cases_if_new(session, [row])

    @staticmethod
    async def offer_look_then_insert(session: AsyncSession, row: dict[str, Any]) -> None:
        if not await case_repo.open_offers_for_consultant(session, "dr-bench"):
            await session.execute(_PLAIN_OFFER_INSERT, row)

    @staticmethod
    async def offer_insert_unless_held(session: AsyncSession, row: dict[str, Any]) -> None:
        await case_repo.insert_offer_unless_held(session, row)

    @staticmethod
    async def open_offer_written(session: AsyncSession, row: dict[str, Any]) -> None:
        await session.execute(_PLAIN_OFFER_INSERT, row)

    def closed_at(self) -> datetime:
        return self.clock.now()

    async def offers_read_then_closed(self, session: AsyncSession, row: dict[str, Any]) -> None:
        for offer in await case_repo.open_offers_for_case(session, row["case_id"]):
            await case_repo.close_offer(
                session, offer, state="withdrawn", reason="cancelled", at=self.closed_at()
            )

    async def offers_closed_returning(self, session: AsyncSession, row: dict[str, Any]) -> None:
        await case_repo.close_open_offers_of_case(
            session, row["case_id"], state="withdrawn", reason="cancelled", at=self.closed_at()
        )

    def outbox_rows(self, _n: int) -> dict[str, Any]:
        """A new case's hand-over's outbox: two events, each to triage-api and audit."""
        now = self.clock.now()
        rows = []
        for event_type in ("offer.made", "consult.offered"):
            document = {"id": new_id(), "type": event_type, "data": {"n": 1}}
            rows += [
                {
                    "event_id": document["id"],
                    "event_type": event_type,
                    "destination": destination,
                    "payload": document,
                    "created_at": now,
                    "next_attempt_at": now,
                    "attempts": 0,
                }
                for destination in ("triage_api", "audit")
            ]
        return {"rows": rows}

    @staticmethod
    async def outbox_then_wake_ups(session: AsyncSession, row: dict[str, Any]) -> None:
        await session.execute(_OUTBOX_INSERT, row["rows"])
        channels, keys = zip(*_WAKE_UPS, strict=True)
        await session.execute(_NOTIFY_ALONE, {"channels": list(channels), "keys": list(keys)})

    @staticmethod
    async def outbox_riding_in_wake_ups(session: AsyncSession, row: dict[str, Any]) -> None:
        await insert_at_commit(session, _OUTBOX_INSERT, row["rows"])
        for channel, key in _WAKE_UPS:
            notify_at_commit(session.sync_session, channel, key)
        await write_pending(session)

    def first_rows(self, n: int) -> dict[str, Any]:
        """A batch of four new cases' first rows, as the group commit writes them after the
        cases: observation set, stream event (a seq of its own each step) and outbox."""
        now = self.clock.now()
        self.event_seq += 1  # each step's events follow the last, whichever way wrote it
        observations, events, outbox = [], [], []
        for case_id in self.triage_cases:
            document = {"id": new_id(), "type": "case.submitted", "data": {"n": n}}
            observation, event, rows = _first_rows(case_id, now, seq=self.event_seq, news=document)
            observations.append(observation)
            events.append(event)
            outbox += rows
        return {"observations": observations, "events": events, "outbox": outbox}

    @staticmethod
    async def first_rows_each_inserted(session: AsyncSession, row: dict[str, Any]) -> None:
        await session.execute(_OBSERVATION_INSERT, row["observations"])
        await session.execute(_CASE_EVENT_INSERT, row["events"])
        await Steps._triage_outbox_riding(session, row["outbox"])

    @staticmethod
    async def first_rows_riding(session: AsyncSession, row: dict[str, Any]) -> None:
        await triage_repo.insert_first_rows(
            session, observations=row["observations"], events=row["events"]
        )
        await Steps._triage_outbox_riding(session, row["outbox"])

    @staticmethod
    async def _triage_outbox_riding(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        await insert_at_commit(session, _TRIAGE_OUTBOX_INSERT, rows)
        for destination in ("consult_router", "audit"):
            notify_at_commit(session.sync_session, "reach_outbox_triage_api", destination)
        await write_pending(session)

    def triage_cases_batch(self, n: int) -> dict[str, Any]:
        """One to eight new cases, the size moving from step to step as a group commit's."""
        now = self.clock.now()
        rows = []
        for _ in range(n % 8 + 1):
            case_id = new_id()
            rows.append(_triage_case_row(case_id, new_case_reference(), now))
        return {"rows": rows}

    @staticmethod
    async def cases_as_values(session: AsyncSession, row: dict[str, Any]) -> None:
        set((await session.execute(_CASES_AS_VALUES, row["rows"])).scalars())

    @staticmethod
    async def cases_as_json(session: AsyncSession, row: dict[str, Any]) -> None:
        await triage_repo.insert_cases_if_new(session, row["rows"])

    def batch_at_commit(self, n: int) -> dict[str, Any]:
        """One to eight new cases, as a group commit on PostgreSQL writes them: each case,
        its first observation set and stream event, and its news to the router and audit
        (the whole case, as `case.submitted` carries it)."""
        now = self.clock.now()
        cases, observations, events, outbox = [], [], [], []
        for _ in range(n % 8 + 1):
            case_id = new_id()
            case = _triage_case_row(case_id, f"R{case_id[-12:]}", now)
            cases.append(case)
            times = {"created_at": now.isoformat(), "updated_at": now.isoformat()}
            document = {
                "id": new_id(), "type": "case.submitted", "occurred_at": now.isoformat(),
                "subject_id": case_id, "data": {"case": {**case, **times}},
            }  # fmt: skip
            observation, event, rows = _first_rows(case_id, now, seq=1, news=document)
            observations.append(observation)
            events.append(event)
            outbox += rows
        return {
            "parts": [
                (triage_repo._INSERT_CASES, cases),
                (_OBSERVATION_INSERT, observations),
                (_CASE_EVENT_INSERT, events),
                (_TRIAGE_OUTBOX_INSERT, outbox),
            ]
        }

    @staticmethod
    async def batch_riding_as_arrays(session: AsyncSession, row: dict[str, Any]) -> None:
        parts: list[tuple[Insert, list[dict[str, Any]]]] = row["parts"]
        shapes = tuple(tuple(rows[0]) for _, rows in parts)
        if shapes not in _RIDING_AS_ARRAYS:
            _RIDING_AS_ARRAYS[shapes] = _NOTIFY_ALL.add_cte(*(
                statement.from_select(
                    list(columns), _rows_from_arrays(statement.table, columns, prefix=f"w{n}_")
                ).cte(f"written_{n}")
                for n, ((statement, _), columns) in enumerate(zip(parts, shapes, strict=True))
            ))  # fmt: skip
        parameters: dict[str, Any] = {
            "channels": ["reach_outbox_triage_api"] * 2, "keys": ["consult_router", "audit"]
        }  # fmt: skip
        for n, (_, rows) in enumerate(parts):
            parameters.update(_array_parameters(rows, tuple(rows[0]), prefix=f"w{n}_"))
        await session.execute(_RIDING_AS_ARRAYS[shapes], parameters)

    @staticmethod
    async def batch_riding_as_json(session: AsyncSession, row: dict[str, Any]) -> None:
        cases, observations, events, outbox = (rows for _, rows in row["parts"])
        await triage_repo.insert_cases_at_commit(session, cases)
        await triage_repo.insert_first_rows(session, observations=observations, events=events)
        await Steps._triage_outbox_riding(session, outbox)

    async def look_in_a_transaction(self, _session: AsyncSession, _row: dict[str, Any]) -> None:
        async with unit_of_work(self.maker) as session:
            await self._look(session)

    async def look_alone(self, _session: AsyncSession, _row: dict[str, Any]) -> None:
        async with reads_alone(self.maker) as session:
            await self._look(session)

    async def _look(self, session: AsyncSession) -> None:
        await open_cases_to_route(
            session,
            now=self.clock.now(),
            ageing_step_seconds=self.ctx.settings.ageing_step_seconds,
        )

    def posting_rows(self, _n: int) -> dict[str, Any]:
        """A commit's outbox rows to two peers over HTTP: four events, each to both."""
        now = self.clock.now()
        documents = [{"id": new_id(), "type": "case.submitted"} for _ in range(4)]
        return {"rows": [
            {"event_id": document["id"], "event_type": "case.submitted",
             "destination": destination, "payload": document, "created_at": now,
             "next_attempt_at": now, "attempts": 0}
            for document in documents for destination in ("consult_router", "audit")
        ]}  # fmt: skip

    async def posting_rows_written(self, _session: AsyncSession, row: dict[str, Any]) -> None:
        async with unit_of_work(self.maker) as session:
            await session.execute(_TRIAGE_OUTBOX_INSERT, row["rows"])

    async def posting_pass_in_transactions(self, _s: AsyncSession, _row: dict[str, Any]) -> None:
        delivery = self.delivery
        async with unit_of_work(self.maker) as session:
            claimed = await delivery._claim(session)
            await delivery._lease(session, [row.id for row in claimed])
        for rows in by_destination(claimed).values():
            async with unit_of_work(self.maker) as session:
                await delivery._record(session, rows[0].destination, _delivered(rows), marked=False)

    async def posting_pass_alone(self, _session: AsyncSession, _row: dict[str, Any]) -> None:
        delivery = self.delivery
        async with write_alone(self.maker) as session:
            claimed = await delivery._claim(session, leasing=True)
        for rows in by_destination(claimed).values():
            async with write_alone(self.maker) as session:
                await delivery._record(session, rows[0].destination, _delivered(rows), marked=False)

    async def seed(self, session: AsyncSession) -> None:
        now = self.clock.now()
        session.add(ConsultConsultant(
            id="dr-bench", name="Dr Bench", grade="consultant", specialties=["frailty"],
            status="available", status_changed_at=now, last_assigned_at=None, message_seq=0,
            created_at=now, updated_at=now,
        ))  # fmt: skip
        rows = [self.new_case(n) for n in range(20)]
        await case_repo.insert_cases(session, rows)
        self.cases = [str(row["id"]) for row in rows]
        self.triage_cases = [new_id() for _ in range(4)]
        await session.execute(
            insert(table_of(TriageCase)),
            [
                _triage_case_row(case_id, f"R-BNCH-{n:02d}", now)
                for n, case_id in enumerate(self.triage_cases)
            ],
        )


def _posting_delivery(maker: SessionMaker, clock: ManualClock) -> OutboxDelivery:
    """triage-api's outbox delivery as split services run it: every peer over HTTP (no
    post is made here: the steps call its claim and its record)."""
    notifier = LocalNotifier()
    outbox = Outbox(service="triage_api", model=TriageOutbox, notifier=notifier, clock=clock)
    return OutboxDelivery(
        outbox=outbox, sessionmaker=maker, peers=cast(PeerClient, None), notifier=notifier,
        clock=clock, settings=OutboxSettings(), metrics=OutboxMetrics(CollectorRegistry()),
    )  # fmt: skip


def _delivered(rows: list[Any]) -> Any:
    return _Sorted(delivered=rows, rejected=[], unanswered=[])


async def _backend_pid(session: AsyncSession, url: str) -> int | None:
    """The PostgreSQL backend process serving `session`, if it runs on this machine."""
    if not is_postgres(url):
        return None
    pid = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
    return pid if is_postgres_process(pid) else None


def _cpu(pid: int | None) -> float:
    """Seconds process `pid` has spent on a CPU; 0 for none. From schedstat, in
    nanoseconds: `cpu_seconds` counts clock ticks (10 ms), coarser than a step."""
    if pid is None:
        return 0.0
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


async def _close_offers_and_cases(session: AsyncSession) -> None:
    """After each step, off the clock: no open offers, and no open cases, so the queue is
    as short as the routing benchmark keeps it (the routing look reads what a loop woken
    there reads)."""
    await session.execute(
        update(ConsultOffer).where(ConsultOffer.state == "open").values(state="withdrawn")
    )
    await session.execute(
        update(ConsultCase).where(ConsultCase.status.in_(case_repo.OPEN_CASE))
        .values(status="closed")
    )  # fmt: skip


async def measure(url: str, *, steps: int, rounds: int) -> dict[str, list[float]]:
    """Run in the child: each pair of ways in turns, `rounds` times; CPU us a step, the
    statements alone (the rows are built, and offers closed, off the clock)."""
    engine = create_engine(url)
    maker = create_sessionmaker(engine)
    ways = Steps(maker)
    # Each step: its row, what is written for it first (off the clock), the two ways.
    pairs: dict[str, tuple[Callable[[int], dict[str, Any]], Step | None, Step, Step]] = {
        "a submitted case": (
            ways.new_case, None, ways.case_read_then_insert, ways.case_insert_if_new
        ),
        "an offer": (ways.offer, None, ways.offer_look_then_insert, ways.offer_insert_unless_held),
        "a cancellation": (
            ways.offer, ways.open_offer_written, ways.offers_read_then_closed,
            ways.offers_closed_returning,
        ),
    }  # fmt: skip
    if is_postgres(url):
        pairs["outbox and wake-ups"] = (
            ways.outbox_rows, None, ways.outbox_then_wake_ups, ways.outbox_riding_in_wake_ups
        )  # fmt: skip
        pairs["a batch's first rows"] = (
            ways.first_rows, None, ways.first_rows_each_inserted, ways.first_rows_riding
        )  # fmt: skip
        pairs["a batch of new cases"] = (
            ways.triage_cases_batch, None, ways.cases_as_values, ways.cases_as_json
        )  # fmt: skip
        pairs["a batch written at its commit"] = (
            ways.batch_at_commit, None, ways.batch_riding_as_arrays, ways.batch_riding_as_json
        )  # fmt: skip
        pairs["a routing look"] = (ways.offer, None, ways.look_in_a_transaction, ways.look_alone)
        pairs["a posting pass"] = (
            ways.posting_rows, ways.posting_rows_written, ways.posting_pass_in_transactions,
            ways.posting_pass_alone,
        )  # fmt: skip
    results: dict[str, list[float]] = {}
    try:
        async with unit_of_work(maker) as session:
            await ways.seed(session)
        for round_number in range(rounds + 1):  # the first round warms up, and is not kept
            for name, (prepare, setup, before, now) in pairs.items():
                for label, step in ((f"{name}, before", before), (f"{name}, now", now)):
                    spent = database = 0.0
                    for n in range(steps):
                        row = prepare(n)
                        async with unit_of_work(maker) as session:
                            await session.connection()  # begun off the clock
                            backend = (
                                None if name in OWN_SESSION else await _backend_pid(session, url)
                            )
                            if setup is not None:
                                await setup(session, row)
                            started, database_started = time.process_time(), _cpu(backend)
                            await step(session, row)
                            spent += time.process_time() - started
                            database += _cpu(backend) - database_started
                            await _close_offers_and_cases(session)
                    if round_number:
                        results.setdefault(label, []).append(spent / steps * 1e6)
                        results.setdefault(f"{label} {DATABASE}", []).append(database / steps * 1e6)
    finally:
        await engine.dispose()
    return results


def _compared(results: dict[str, list[float]], name: str, part: str) -> str:
    suffix = f" {part}" if part else ""
    before, now = results[f"{name}, before{suffix}"], results[f"{name}, now{suffix}"]
    ratios = [b / max(n, 1e-9) for b, n in zip(before, now, strict=True)]
    return (
        f"before {statistics.median(before):7.1f} us  now {statistics.median(now):7.1f} us"
        f"  before / now {statistics.median(ratios):5.2f}x"
        f" (rounds {min(ratios):.2f}-{max(ratios):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.child, steps=args.steps, rounds=args.rounds))))
        return
    print(machine_report())
    print(f"load      {args.steps} steps a way a round, {args.rounds} rounds (after one to "
          "warm up), the ways in turns, in one process on the server core")  # fmt: skip
    print()
    measured = []
    for backend, url in databases("statements"):
        migrate(url)
        command = [PYTHON, "-m", "bench.statement_costs", "--child", url,
                   "--steps", str(args.steps), "--rounds", str(args.rounds)]  # fmt: skip
        done = subprocess.run(
            pinned(command, SERVER_CPU), env=base_env(), cwd=ROOT, capture_output=True, text=True
        )
        if done.returncode != 0:
            fail(f"{backend} could not be measured:\n{done.stderr[-2000:]}")
        results: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
        steps = [name.removesuffix(", before") for name in results if name.endswith(", before")]
        for name in steps:
            print(f"{backend:<11} {name:<30} {_compared(results, name, '')}")
            if backend == "postgresql" and any(results[f"{name}, now {DATABASE}"]):
                print(
                    f"{'':<11} {'  the database server':<30} {_compared(results, name, DATABASE)}"
                )
        measured.append(backend)
    if "postgresql" not in measured:
        fail("PostgreSQL is needed for the second half")


if __name__ == "__main__":
    main()
