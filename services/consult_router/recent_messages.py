"""The consultant messages this process logged lately, kept so its own sockets can send
them without reading them back from the database.

A socket's pump used to wake on every logged message and read the consultant's log in a
transaction of its own: one more transaction, in series, between a case being routed and
its offer reaching the consultant. The log stays the source of truth. A message is kept
here only once its transaction has committed, in the order the consultant's row lock gave
the seqs, and a pump takes from here only a run that follows the seq it last sent without
a gap; anything else (a message another process logged, one older than what is kept) it
reads from the log as before.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

# Enough for any burst a consultant's sockets may still be sending when the next arrives.
KEPT_PER_CONSULTANT = 32


@dataclass(frozen=True, slots=True)
class LoggedMessage:
    seq: int
    type: str
    payload: dict[str, Any]


class RecentMessages:
    def __init__(self, *, kept_per_consultant: int = KEPT_PER_CONSULTANT) -> None:
        self._kept = kept_per_consultant
        self._by_consultant: dict[str, deque[LoggedMessage]] = {}

    def committed(self, consultant_id: str, message: LoggedMessage) -> None:
        """Keep a message whose transaction has committed."""
        kept = self._by_consultant.get(consultant_id)
        if kept is None:
            kept = self._by_consultant[consultant_id] = deque(maxlen=self._kept)
        kept.append(message)

    def following(self, consultant_id: str, seq: int) -> list[LoggedMessage]:
        """The kept messages from `seq + 1` on, up to the first gap; empty if this process
        did not log `seq + 1` or no longer keeps it."""
        run: list[LoggedMessage] = []
        expected = seq + 1
        for message in self._by_consultant.get(consultant_id, ()):
            if message.seq < expected:
                continue
            if message.seq > expected:
                break
            run.append(message)
            expected += 1
        return run

    def newest_seq(self, consultant_id: str) -> int | None:
        kept = self._by_consultant.get(consultant_id)
        return kept[-1].seq if kept else None
