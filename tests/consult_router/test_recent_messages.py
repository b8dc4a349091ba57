"""The messages a process keeps for its own sockets: only a gapless run is ever handed out."""

from __future__ import annotations

from services.consult_router.recent_messages import LoggedMessage, RecentMessages


def kept(*seqs: int, kept_per_consultant: int = 32) -> RecentMessages:
    recent = RecentMessages(kept_per_consultant=kept_per_consultant)
    for seq in seqs:
        recent.committed("dr-a", LoggedMessage(seq=seq, type="offer", payload={"n": seq}))
    return recent


def seqs(messages: list[LoggedMessage]) -> list[int]:
    return [message.seq for message in messages]


def test_the_run_after_the_last_sent_seq() -> None:
    assert seqs(kept(4, 5, 6).following("dr-a", 4)) == [5, 6]
    assert seqs(kept(4, 5, 6).following("dr-a", 6)) == []


def test_a_gap_ends_the_run() -> None:
    # 7 was logged by another process: 8 must wait until the log has given 7.
    assert seqs(kept(5, 6, 8).following("dr-a", 4)) == [5, 6]
    assert seqs(kept(5, 6, 8).following("dr-a", 6)) == []


def test_nothing_when_the_next_message_is_no_longer_kept() -> None:
    recent = kept(*range(1, 11), kept_per_consultant=3)
    assert seqs(recent.following("dr-a", 2)) == []
    assert seqs(recent.following("dr-a", 7)) == [8, 9, 10]
    assert recent.newest_seq("dr-a") == 10


def test_consultants_are_kept_apart() -> None:
    recent = kept(1, 2)
    assert recent.following("dr-b", 0) == []
    assert recent.newest_seq("dr-b") is None
