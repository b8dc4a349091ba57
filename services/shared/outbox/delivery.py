"""The delivery loop: claims due outbox rows, hands them to their peers, records results.

A claim takes the oldest due rows with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so
replicas share the work. A peer in this process (the embedded default) takes its events
in the claiming transaction, so events are handled and marked delivered together or not
at all, and a replica that dies mid-way leaves nothing half done (when every destination
of a pass is in this process, its claim marks the rows delivered as it takes them, one
statement instead of two, and unmarks any the peer refuses or leaves unanswered). Events
for a peer over HTTP are leased instead (`claimed_until`) and posted after the claim
commits, so no database connection is held while posting, and a replica that dies
mid-delivery leaves rows that another picks up once the lease lapses (when every
destination of a pass is over HTTP, as between split services, the claim leases its rows
as it takes them, one statement that is a transaction by itself). A peer that fails
is paused with exponential back-off (and its rows keep their place); a receiver that
rejects an event as invalid marks that row dead, which is counted and alerted on, and
never retried.

Destinations no one waits on (audit's trail) can be *deferred*: a second loop delivers
them, in transactions of their own, after letting their events gather for a moment. The
router's offer to a consultant then never waits for the trail's hashing and writing, and
the trail takes its events in fewer, larger batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import (
    Integer,
    Select,
    Table,
    Update,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.clients.peers import Peer, PeerClient, PeerUnavailable
from services.shared.clock import Clock
from services.shared.db.base import table_of
from services.shared.db.models.outbox import OutboxRowMixin
from services.shared.db.session import (
    RetryWithSavepoints,
    SessionMaker,
    unit_of_work,
    without_savepoints,
    write_alone,
    write_pending,
)
from services.shared.notify import Notifier, Subscription
from services.shared.observability import log_failure
from services.shared.outbox.inbox import LocalReceiver
from services.shared.outbox.writer import Outbox, outbox_channel
from services.shared.schemas.events import EventBatchResult
from services.shared.settings import OutboxSettings

logger = logging.getLogger("reach.outbox")

DELIVERED_RETENTION = timedelta(days=3)
PURGE_EVERY = timedelta(minutes=10)
_KNOWN_OUTCOMES = frozenset({"accepted", "duplicate", "ignored", "rejected"})


class OutboxMetrics:
    """Outbox health for every service on one registry (label `service`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending = Gauge(
            "reach_outbox_pending",
            "Outbox events not yet delivered.",
            ["service"],
            registry=registry,
        )
        self.oldest_pending = Gauge(
            "reach_outbox_oldest_pending_seconds",
            "Age of the oldest undelivered outbox event.",
            ["service"],
            registry=registry,
        )
        self.delivered = Counter(
            "reach_outbox_delivered",
            "Outbox events delivered, by destination.",
            ["service", "destination"],
            registry=registry,
        )
        self.failures = Counter(
            "reach_outbox_delivery_failures",
            "Failed delivery attempts (the events are retried), by destination.",
            ["service", "destination"],
            registry=registry,
        )
        self.dead = Counter(
            "reach_outbox_dead",
            "Outbox events refused by their receiver as invalid (never retried).",
            ["service", "destination"],
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    event_id: str
    destination: str
    payload: dict[str, Any]
    attempts: int


# id, event id, destination, payload, attempts.
_DueSelect = Select[int, str, str, dict[str, Any], int]


def due_query(
    model: type[OutboxRowMixin],
    *,
    now: datetime,
    limit: int,
    paused: list[str],
    only: list[str] | None = None,
) -> tuple[_DueSelect, dict[str, Any]]:
    """The oldest rows due for delivery and not leased to another deliverer, as a claim
    reads them (not for the `paused` destinations; if `only` is given, for those alone):
    the statement and its parameters. Served by the pending-rows index: its cost follows
    the undelivered rows, not all."""
    params: dict[str, Any] = {"now": now, "limit": limit}
    if paused:
        params["paused"] = paused
    if only is not None:
        params["only"] = only
    return _due_select(table_of(model), bool(paused), only is not None), params


@functools.cache
def _due_select(table: Table, paused: bool, only: bool) -> _DueSelect:
    # Built once per table and shape, the values as parameters: built afresh for each
    # claim, the statement and its cache key cost about 200 us, more than the claim took
    # to run (see `bench/RESULTS.md`).
    now = bindparam("now", type_=table.c.next_attempt_at.type)
    due = (
        select(table.c.id, table.c.event_id, table.c.destination, table.c.payload,
               table.c.attempts)
        .where(
            table.c.delivered_at.is_(None),
            table.c.dead_at.is_(None),
            table.c.next_attempt_at <= now,
            or_(table.c.claimed_until.is_(None), table.c.claimed_until < now),
        )
        .order_by(table.c.id)
        .limit(bindparam("limit", type_=Integer()))
        .with_for_update(skip_locked=True)
    )  # fmt: skip
    if paused:
        due = due.where(table.c.destination.not_in(bindparam("paused", expanding=True)))
    if only:
        due = due.where(table.c.destination.in_(bindparam("only", expanding=True)))
    return due


def due_rows(
    model: type[OutboxRowMixin],
    *,
    now: datetime,
    limit: int,
    paused: list[str],
    only: list[str] | None = None,
) -> _DueSelect:
    """A claim's statement with its values bound in, to inspect (its query plan, say)."""
    statement, params = due_query(model, now=now, limit=limit, paused=paused, only=only)
    return statement.params(params)


@functools.cache
def _claim_delivered(table: Table, paused: bool, only: bool) -> Update:
    """The due rows marked delivered as they are claimed, for a pass whose hand-overs
    share the claiming transaction (`_claiming`)."""
    return _claiming(table, paused, only).values(
        delivered_at=bindparam("now"), claimed_until=None, attempts=table.c.attempts + 1
    )


@functools.cache
def _claim_leased(table: Table, paused: bool, only: bool) -> Update:
    """The due rows leased (until `until`) as they are claimed, for a pass that posts
    them all to peers over HTTP once the claim has committed (`_claiming`)."""
    return _claiming(table, paused, only).values(claimed_until=bindparam("until"))


def _claiming(table: Table, paused: bool, only: bool) -> Update:
    """An update of the due rows (as `_due_select` finds and locks them), returning them
    as a claim reads them. The due rows are a materialised CTE: on PostgreSQL, a `LIMIT`
    with `SKIP LOCKED` in a plain subquery can be run more than once by the plan, and take
    more rows than the limit."""
    due = (
        _due_select(table, paused, only)
        .with_only_columns(table.c.id)
        .cte("due")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return (
        update(table)
        .where(table.c.id.in_(select(due.c.id)))
        .returning(table.c.id, table.c.event_id, table.c.destination, table.c.payload,
                   table.c.attempts)
    )  # fmt: skip


class _Writes:
    """What a delivery writes to its outbox's rows, built once on the table (Core: see
    `table_of`), with the values as parameters."""

    def __init__(self, table: Table) -> None:
        among = table.c.id.in_(bindparam("ids", expanding=True))
        self.lease = update(table).where(among).values(claimed_until=bindparam("until"))
        self.delivered = (
            update(table)
            .where(among)
            .values(delivered_at=bindparam("at"), claimed_until=None,
                    attempts=table.c.attempts + 1)
        )  # fmt: skip
        # Keyed by whether the claim marked the rows delivered and counted their attempt
        # (`_claim_delivered`): only then is the mark undone. A row leased for posting
        # may have been delivered by another deliverer once its lease ran out.
        self.dead = {marked: _dead(table, marked=marked) for marked in (False, True)}
        self.held_back = {marked: _held_back(table, marked=marked) for marked in (False, True)}
        self.purge = delete(table).where(table.c.delivered_at < bindparam("before"))


def _dead(table: Table, *, marked: bool) -> Update:
    """A row its receiver refused: dead, its attempt counted (or, if the claim marked it
    delivered and counted it, unmarked)."""
    values: dict[str, Any] = {
        "dead_at": bindparam("at"), "claimed_until": None, "last_error": bindparam("error")
    }  # fmt: skip
    values.update({"delivered_at": None} if marked else {"attempts": table.c.attempts + 1})
    return update(table).where(table.c.id == bindparam("row_id")).values(values)


def _held_back(table: Table, *, marked: bool) -> Update:
    """Rows their destination failed to take: due again after a pause, their attempt
    counted (or, if the claim marked them delivered and counted it, unmarked)."""
    values: dict[str, Any] = {
        "next_attempt_at": bindparam("retry_at"), "claimed_until": None,
        "last_error": bindparam("error"),
    }  # fmt: skip
    values.update({"delivered_at": None} if marked else {"attempts": table.c.attempts + 1})
    return update(table).where(table.c.id.in_(bindparam("ids", expanding=True))).values(values)


def by_destination(rows: list[_Claimed]) -> dict[str, list[_Claimed]]:
    """Claimed rows by destination, each destination's in the order claimed."""
    grouped: dict[str, list[_Claimed]] = defaultdict(list)
    for row in rows:
        grouped[row.destination].append(row)
    return grouped


class _HandOverFailed(Exception):
    """A peer in this process failed to take its events (not a refusal: an error)."""

    def __init__(self, destination: str, rows: list[_Claimed], reason: str) -> None:
        super().__init__(f"handing events to {destination} failed: {reason}")
        self.destination = destination
        self.rows = rows
        self.reason = reason


@dataclass
class _Sorted:
    """A batch's rows by what the receiver answered for each."""

    delivered: list[_Claimed]
    rejected: list[tuple[_Claimed, str]]
    unanswered: list[_Claimed]

    @classmethod
    def of(cls, rows: list[_Claimed], result: EventBatchResult) -> _Sorted:
        outcomes = {item.id: item for item in result.results}
        sorted_out = cls([], [], [])
        for row in rows:
            outcome = outcomes.get(row.event_id)
            if outcome is None or outcome.outcome not in _KNOWN_OUTCOMES:
                sorted_out.unanswered.append(row)
            elif outcome.outcome == "rejected":
                sorted_out.rejected.append((row, outcome.detail or "rejected"))
            else:
                sorted_out.delivered.append(row)
        return sorted_out


class OutboxDelivery:
    def __init__(
        self,
        *,
        outbox: Outbox,
        sessionmaker: SessionMaker,
        peers: PeerClient,
        notifier: Notifier,
        clock: Clock,
        settings: OutboxSettings,
        metrics: OutboxMetrics,
        local_peers: Mapping[str, LocalReceiver] | None = None,
        deferred: frozenset[str] = frozenset(),
        defer_seconds: float = 0.0,
    ) -> None:
        self._outbox = outbox
        self._deferred = deferred
        # The prompt lane's destinations: every peer but the deferred, and this service.
        self._not_deferred = frozenset(Peer).difference(deferred, {outbox.service})
        self._defer_seconds = defer_seconds
        self._local_peers = local_peers if local_peers is not None else {}
        self._model = outbox.model
        self._writes = _Writes(table_of(outbox.model))
        self._maker = sessionmaker
        self._peers = peers
        self._notifier = notifier
        self._clock = clock
        self._settings = settings
        self._metrics = metrics
        self._service = outbox.service
        # Destinations that just failed, and when to try them again.
        self._paused_until: dict[str, datetime] = {}
        self._failures_in_a_row: dict[str, int] = defaultdict(int)
        self._last_purge: datetime | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set: the prompt destinations at once, the deferred
        ones (if any) in a loop of their own."""
        if not self._deferred:
            await self._run_lane(stopping, deferred=False)
            return
        async with asyncio.TaskGroup() as lanes:
            lanes.create_task(self._run_lane(stopping, deferred=False))
            lanes.create_task(self._run_lane(stopping, deferred=True))

    async def _run_lane(self, stopping: asyncio.Event, *, deferred: bool) -> None:
        """One lane's loop; wakes on new events, polls as a safety net."""
        with self._notifier.subscribe(outbox_channel(self._service)) as wake:
            while not stopping.is_set():
                try:
                    sent_full_batch = await self._deliver_lane(deferred=deferred)
                    if not deferred:
                        await self._purge_if_due()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the database is away: keep the loop alive
                    log_failure(logger, f"outbox delivery pass failed for {self._service}", exc)
                    sent_full_batch = False
                if not sent_full_batch:
                    await self._wait_for_news(wake, stopping, deferred=deferred)

    async def _wait_for_news(
        self, wake: Subscription, stopping: asyncio.Event, *, deferred: bool
    ) -> None:
        """Until a commit writes events for one of the lane's destinations, the poll comes
        round (a safety net: a row whose retry fell due, a wake-up lost), or `stopping`."""
        loop = asyncio.get_running_loop()
        poll_at = loop.time() + self._settings.outbox_poll_seconds
        while True:
            remaining = poll_at - loop.time()
            if remaining <= 0 or not await wake.wait(remaining, stopping=stopping):
                return
            keys = wake.drain_keys()
            if not keys or not keys <= self._other_lanes_destinations(deferred=deferred):
                break
        if deferred:
            # Let the events of the next moment join this pass.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._defer_seconds)

    def _other_lanes_destinations(self, *, deferred: bool) -> frozenset[str]:
        """News for these alone is not news for this lane. A wake-up for anything else
        (another destination, `ANY_KEY`) is."""
        return self._not_deferred if deferred else self._deferred

    async def deliver_due(self) -> bool:
        """One pass of each lane: the prompt destinations, then the deferred. True when
        either claimed a full batch (more may be waiting)."""
        prompt_full = await self._deliver_lane(deferred=False)
        deferred_full = await self._deliver_lane(deferred=True) if self._deferred else False
        return prompt_full or deferred_full

    async def _deliver_lane(self, *, deferred: bool) -> bool:
        """One pass over the prompt destinations, or over the deferred ones.

        Rows for a peer in this process are handed to its inbox and marked in the claiming
        transaction itself: its row locks are the claim, so no lease is written, and a
        pass costs one transaction however many local peers it serves. Rows for a peer
        over HTTP are leased in that transaction (or, when the lane has no local peer, by
        the claim itself, one statement alone) and posted after it commits, holding no
        connection while they wait for the peer.
        """
        if self._all_away(deferred=deferred):
            return await self._posting_pass(deferred=deferred)
        # A local peer that fails undoes the whole pass; it is paused, and the pass runs
        # again without it, so one peer failing holds back no other. Each failure pauses
        # one more peer, so this ends.
        for _attempt in range(len(self._local_peers)):
            try:
                return await self._deliver_pass(deferred=deferred)
            except _HandOverFailed as failed:
                async with unit_of_work(self._maker) as session:
                    await self._hold_back(session, failed.destination, failed.rows, failed.reason)
        return await self._deliver_pass(deferred=deferred)

    async def _deliver_pass(self, *, deferred: bool) -> bool:
        """A pass whose hand-overs skip their savepoints (two round trips each, almost
        never rolled back) and, if a part of one fails, the pass again with them, so the
        failure undoes that part alone, as it always has."""
        try:
            return await self._pass(deferred=deferred, savepoints=False)
        except RetryWithSavepoints:
            return await self._pass(deferred=deferred, savepoints=True)

    async def _pass(self, *, deferred: bool, savepoints: bool) -> bool:
        handed: list[tuple[str, _Sorted]] = []
        away: dict[str, list[_Claimed]] = defaultdict(list)
        async with unit_of_work(self._maker) as session:
            if not savepoints:
                without_savepoints(session)
            marked = self._all_here(deferred=deferred)
            claimed = await self._claim(session, deferred=deferred, marking_delivered=marked)
            here: dict[str, list[_Claimed]] = defaultdict(list)
            for row in claimed:
                local = row.destination in self._local_peers
                (here if local else away)[row.destination].append(row)
            for destination, rows in here.items():
                outcome = await self._hand_over(session, destination, rows, marked=marked)
                handed.append((destination, outcome))
            if away:
                await self._lease(session, [row.id for rows in away.values() for row in rows])
        for destination, outcome in handed:
            self._after_delivery(destination, outcome)
        if away:
            await asyncio.gather(*(self._post(dest, rows) for dest, rows in away.items()))
        return len(claimed) >= self._settings.outbox_batch_size

    async def _posting_pass(self, *, deferred: bool) -> bool:
        """A pass whose destinations are all peers over HTTP (split services): its rows
        are claimed and leased in one statement, a transaction by itself (on PostgreSQL,
        no BEGIN nor COMMIT round trips), then posted with no connection held."""
        async with write_alone(self._maker) as session:
            claimed = await self._claim(session, deferred=deferred, leasing=True)
        away = by_destination(claimed)
        await asyncio.gather(*(self._post(dest, rows) for dest, rows in away.items()))
        return len(claimed) >= self._settings.outbox_batch_size

    async def refresh_metrics(self, session: AsyncSession) -> None:
        model = self._model
        count, oldest = (
            await session.execute(
                select(func.count(), func.min(model.created_at)).where(
                    model.delivered_at.is_(None), model.dead_at.is_(None)
                )
            )
        ).one()
        self._metrics.pending.labels(self._service).set(count)
        age = 0.0 if oldest is None else (self._clock.now() - oldest).total_seconds()
        self._metrics.oldest_pending.labels(self._service).set(max(age, 0.0))

    def _all_here(self, *, deferred: bool) -> bool:
        """Whether every destination of the lane is a peer in this process (the embedded
        default), whose hand-over shares the claiming transaction."""
        lane = self._deferred if deferred else self._not_deferred
        return lane <= self._local_peers.keys()

    def _all_away(self, *, deferred: bool) -> bool:
        """Whether no destination of the lane is a peer in this process."""
        lane = self._deferred if deferred else self._not_deferred
        return lane.isdisjoint(self._local_peers.keys())

    async def _claim(
        self,
        session: AsyncSession,
        *,
        deferred: bool = False,
        marking_delivered: bool = False,
        leasing: bool = False,
    ) -> list[_Claimed]:
        """The lane's due rows, locked until `session`'s transaction ends (`FOR UPDATE
        SKIP LOCKED`; for a claim alone, `write_alone`, its statement's end),
        oldest first; `marking_delivered`: marked delivered in the same statement, for a
        pass whose hand-overs share the transaction (a failure undoes the mark with them);
        `leasing`: leased in the same statement, for a pass that posts them all."""
        now = self._clock.now()
        paused = [dest for dest, until in self._paused_until.items() if until > now]
        only: list[str] | None = None
        if deferred or marking_delivered:
            # Marking as it takes, a claim takes only rows it can hand over in its own
            # transaction: those for the lane's destinations, all peers in this process.
            lane = self._deferred if deferred else self._not_deferred
            only = sorted(lane.difference(paused))
            if not only:
                return []
            paused = []
        else:
            paused = [*paused, *self._deferred]
        limit = self._settings.outbox_batch_size
        due, params = due_query(self._model, now=now, limit=limit, paused=paused, only=only)
        table, shape = table_of(self._model), (bool(paused), only is not None)
        if marking_delivered:
            claim = _claim_delivered(table, *shape)
        elif leasing:
            claim = _claim_leased(table, *shape)
            params["until"] = self._lease_until()
        else:
            return [_Claimed(*row) for row in await session.execute(due, params)]
        # RETURNING gives no order: the events go to their receivers in the order written.
        return sorted(
            (_Claimed(*row) for row in await session.execute(claim, params)),
            key=lambda row: row.id,
        )

    async def _lease(self, session: AsyncSession, ids: list[int]) -> None:
        """Rows posted after the claim commits stay ours for a lease, which another
        deliverer honours and which lapses if this process dies while posting."""
        await session.execute(self._writes.lease, {"ids": ids, "until": self._lease_until()})

    def _lease_until(self) -> datetime:
        return self._clock.now() + timedelta(seconds=self._settings.outbox_lease_seconds)

    async def _hand_over(
        self, session: AsyncSession, destination: str, rows: list[_Claimed], *, marked: bool
    ) -> _Sorted:
        """A peer in this process takes the events in the claiming transaction.
        `marked`: the claim marked the rows delivered already."""
        receive = self._local_peers[destination]
        try:
            result = await receive(session, [row.payload for row in rows])
            # The peer's own news, written now: failing to write it is the peer's failure.
            await write_pending(session)
        except (asyncio.CancelledError, RetryWithSavepoints):
            raise
        except Exception as exc:  # the pass is undone; these rows wait out a pause
            log_failure(logger, f"{self._service}: handing events to {destination} failed", exc)
            raise _HandOverFailed(destination, rows, type(exc).__name__) from exc
        sorted_out = _Sorted.of(rows, result)
        await self._record(session, destination, sorted_out, marked=marked)
        return sorted_out

    async def _post(self, destination: str, rows: list[_Claimed]) -> None:
        try:
            result = await self._peers.post_events(Peer(destination), [row.payload for row in rows])
        except (PeerUnavailable, ValueError) as exc:
            async with unit_of_work(self._maker) as session:
                await self._hold_back(session, destination, rows, str(exc))
            return
        sorted_out = _Sorted.of(rows, result)
        # Every row delivered (as almost always) is one statement, a transaction by itself.
        alone = not sorted_out.rejected and not sorted_out.unanswered
        async with (write_alone if alone else unit_of_work)(self._maker) as session:
            await self._record(session, destination, sorted_out, marked=False)
        self._after_delivery(destination, sorted_out)

    async def _record(
        self, session: AsyncSession, destination: str, sorted_out: _Sorted, *, marked: bool
    ) -> None:
        """What the receiver answered: delivered, dead, or (no answer) held back. Each row
        counts one attempt; `marked`: the claim marked them delivered and counted it."""
        now = self._clock.now()
        if sorted_out.delivered and not marked:
            ids = [row.id for row in sorted_out.delivered]
            await session.execute(self._writes.delivered, {"ids": ids, "at": now})
        if sorted_out.rejected:
            await session.execute(
                self._writes.dead[marked],
                [{"row_id": row.id, "at": now, "error": detail[:500]}
                 for row, detail in sorted_out.rejected],
            )  # fmt: skip
        if sorted_out.unanswered:
            await self._hold_back(
                session, destination, sorted_out.unanswered, "no result for the event",
                marked=marked,
            )  # fmt: skip

    def _after_delivery(self, destination: str, sorted_out: _Sorted) -> None:
        """Once the outcome is committed: the peer answered, so it is not paused (unless
        it left events unanswered), and the counts."""
        if not sorted_out.unanswered:
            self._paused_until.pop(destination, None)
            self._failures_in_a_row.pop(destination, None)
        self._metrics.delivered.labels(self._service, destination).inc(len(sorted_out.delivered))
        rejected = sorted_out.rejected
        if rejected:
            self._metrics.dead.labels(self._service, destination).inc(len(rejected))
            logger.error(
                "%s: %d event(s) refused by %s as invalid",
                self._service,
                len(rejected),
                destination,
            )

    async def _hold_back(
        self,
        session: AsyncSession,
        destination: str,
        rows: list[_Claimed],
        reason: str,
        *,
        marked: bool = False,
    ) -> None:
        """The destination failed: pause it, and make its rows wait out the pause (and
        count the attempt, or unmark them if the claim `marked` them delivered)."""
        now = self._clock.now()
        self._failures_in_a_row[destination] += 1
        pause = self._backoff(self._failures_in_a_row[destination])
        self._paused_until[destination] = now + pause
        self._metrics.failures.labels(self._service, destination).inc()
        logger.warning(
            "%s: delivery to %s failed (%s); retrying in %.1fs",
            self._service,
            destination,
            reason,
            pause.total_seconds(),
        )
        # Every failed row waits out the destination's pause, so when the peer is back its
        # backlog goes in the order it was written.
        await session.execute(
            self._writes.held_back[marked],
            {
                "ids": [row.id for row in rows],
                "retry_at": now + pause,
                "error": reason[:500],
            },
        )

    def _backoff(self, attempts: int) -> timedelta:
        base = self._settings.outbox_base_backoff_seconds * (2 ** min(attempts - 1, 20))
        capped = min(base, self._settings.outbox_max_backoff_seconds)
        # Jitter spreads the retries of many replicas after a shared outage.
        return timedelta(seconds=capped * random.uniform(0.5, 1.0))  # noqa: S311

    async def _purge_if_due(self) -> None:
        now = self._clock.now()
        if self._last_purge is not None and now - self._last_purge < PURGE_EVERY:
            return
        self._last_purge = now
        async with unit_of_work(self._maker) as session:
            await session.execute(self._writes.purge, {"before": now - DELIVERED_RETENTION})
