"""The queue feed: one encoding per change, to every dashboard, and no dashboard that has
stopped reading holds up the others."""

from __future__ import annotations

import asyncio

import pytest

from services.consult_router.queue_feed import (
    DEBOUNCE_SECONDS,
    LONGEST_PAUSE_SECONDS,
    QueueFeed,
    pause_after,
)


async def test_every_dashboard_gets_the_same_encoding() -> None:
    feed = QueueFeed()
    got: list[str] = []

    async def deliver(encoded: str) -> None:
        got.append(encoded)

    with feed.watch(deliver, drop=lambda: None), feed.watch(deliver, drop=lambda: None):
        await feed.broadcast_encoded("[]")
    assert got == ["[]", "[]"]


async def test_a_dashboard_that_stops_reading_is_dropped_and_holds_up_no_other() -> None:
    feed = QueueFeed(send_timeout_seconds=0.05)
    never = asyncio.Event()
    tried: list[str] = []
    dropped: list[str] = []

    async def stopped_reading(encoded: str) -> None:
        tried.append(encoded)
        await never.wait()  # its buffers are full: the send never finishes

    got: list[str] = []

    async def reading(encoded: str) -> None:
        got.append(encoded)

    with (
        feed.watch(stopped_reading, drop=lambda: dropped.append("stopped")),
        feed.watch(reading, drop=lambda: dropped.append("reading")),
    ):
        await feed.broadcast_encoded("[]")
        await feed.broadcast_encoded("[]")
    assert got == ["[]", "[]"]  # the one behind it got both
    assert dropped == ["stopped"]
    assert tried == ["[]"]  # dropped at once: never waited for again


class TestRefreshesKeepToTheirShare:
    """A refresh of a long queue (a backlog) takes long; the next waits the longer, so
    dashboards never take more than a twentieth of the process from routing."""

    def test_a_quick_refresh_waits_the_debounce(self) -> None:
        assert pause_after(0.002) == DEBOUNCE_SECONDS

    @pytest.mark.parametrize("refresh_seconds", [0.02, 0.05, 0.1])
    def test_a_slow_refresh_is_a_twentieth_of_the_time_from_one_to_the_next(
        self, refresh_seconds: float
    ) -> None:
        pause = pause_after(refresh_seconds)
        assert pause > DEBOUNCE_SECONDS
        assert refresh_seconds / (refresh_seconds + pause) == pytest.approx(0.05)

    def test_a_dashboard_is_never_more_than_the_longest_pause_behind(self) -> None:
        assert pause_after(5.0) == LONGEST_PAUSE_SECONDS
