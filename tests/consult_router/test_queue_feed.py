"""The queue feed: one encoding per change, to every dashboard, and no dashboard that has
stopped reading holds up the others."""

from __future__ import annotations

import asyncio

from services.consult_router.queue_feed import QueueFeed


async def test_every_dashboard_gets_the_same_encoding() -> None:
    feed = QueueFeed()
    got: list[str] = []

    async def deliver(encoded: str) -> None:
        got.append(encoded)

    with feed.watch(deliver, drop=lambda: None), feed.watch(deliver, drop=lambda: None):
        await feed.broadcast([])
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
        await feed.broadcast([])
        await feed.broadcast([])
    assert got == ["[]", "[]"]  # the one behind it got both
    assert dropped == ["stopped"]
    assert tried == ["[]"]  # dropped at once: never waited for again
