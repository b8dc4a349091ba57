"""JSON for what reach stores and sends its peers, with orjson.

A new case is ten JSON documents (the case row, its observations, its first stream event,
its outbox rows), and its outbox events are encoded again to post them; the standard
library's encoder was about 5% of a submission's CPU. Non-string keys become strings, as
`json.dumps` makes them, so what was written either way reads back the same.
"""

from __future__ import annotations

from typing import Any

import orjson

load_json = orjson.loads


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def json_text(value: Any) -> str:
    return json_bytes(value).decode()
