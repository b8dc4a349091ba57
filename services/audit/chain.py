"""The hash chain: each entry's hash is SHA-256 over the previous entry's hash and the
entry's canonical content (sorted-key JSON of every stored field but the hashes)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64


def canonical(
    *,
    seq: int,
    event_id: str,
    event_type: str,
    source: str,
    subject_id: str,
    actor_sub: str | None,
    actor_role: str | None,
    occurred_at: datetime,
    recorded_at: datetime,
    details: dict[str, Any],
) -> bytes:
    content = {
        "seq": seq,
        "event_id": event_id,
        "event_type": event_type,
        "source": source,
        "subject_id": subject_id,
        "actor_sub": actor_sub,
        "actor_role": actor_role,
        "occurred_at": _instant(occurred_at),
        "recorded_at": _instant(recorded_at),
        "details": details,
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def link(prev_hash: str, content: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + content).hexdigest()


def _instant(moment: datetime) -> str:
    # Microseconds and UTC always: the same instant hashes the same on every database.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
