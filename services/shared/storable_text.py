"""Text the database can store, and how to find text it cannot in what a client sent.

PostgreSQL refuses a NUL character in `text` and in `jsonb` (SQLite stores it), and no
driver can encode a lone surrogate (half of a UTF-16 pair, which the JSON escape
`\\ud800`, or the bytes of its UTF-8 form, decode to) as UTF-8. Either fails the statement
that carries it: a 500 for the request, and for every other crew's case in its batch a
second write, alone. So text holding either is refused where it comes in (see
`services.shared.text_guard`, `services.shared.ws`, the inbox and the token check),
naming the field and never repeating the value, which may be a patient's.

Most requests hold neither, and looking at every string of every request would cost
each one a walk over its values. `may_hold_unstorable` scans the raw JSON once, for what
must be there if the parsed value is to hold either; only when it finds something does
`unstorable_fields` walk the parsed value to name the fields.
"""

from __future__ import annotations

import re
from typing import Any

from services.shared.errors import FieldProblem

NUL = "\x00"
NUL_MESSAGE = "must not contain NUL characters"
SURROGATE_MESSAGE = "must be valid Unicode text (it holds a lone surrogate)"
KEY_MESSAGE = "holds a field name that is not storable text (a NUL or a lone surrogate)"

MOST_NAMED = 20  # problems reported for one body or message
# What a field name of ours looks like; any other key is client text, not repeated.
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

# The JSON escapes that parse to a NUL or to a surrogate.
_ESCAPES = ("\\u0000", "\\ud", "\\uD")
# Stands, in the walk, for a field name that is not storable.
_UNSTORABLE_KEY = object()


def is_storable(text: str) -> bool:
    """Whether the database can store `text`: no NUL character, no lone surrogate."""
    if NUL in text:
        return False
    if text.isascii():  # no surrogate then; known without looking
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def may_hold_unstorable(raw: bytes | str) -> bool:
    """False when JSON text `raw` cannot parse to a value holding unstorable text; True
    when it may (then `unstorable_fields` says where, if anywhere).

    What raw JSON holds if its parsed value is to hold a NUL or a lone surrogate: the
    escape `\\u0000` or one of `\\ud800`-`\\udfff` (either case); a NUL byte, raw (which the
    parser refuses) or of a UTF-16 or UTF-32 body (which `json.loads` reads); or the first
    byte of a surrogate's UTF-8 form, which `json.loads` decodes with "surrogatepass".
    `\\\\u0000` (an escaped backslash, then `u0000`) matches too, harmlessly: the walk
    finds nothing. About 0.2 us for a case's 600 bytes (`find` is quicker than `in` here).
    """
    if isinstance(raw, str):  # decoded already, by whoever received it
        return any(escape in raw for escape in _ESCAPES) or not is_storable(raw)
    # Every escape starts with a backslash, and most bodies hold none: one scan for it.
    if raw.find(b"\\") >= 0 and (
        raw.find(b"\\u0000") >= 0 or raw.find(b"\\ud") >= 0 or raw.find(b"\\uD") >= 0
    ):
        return True
    return raw.find(b"\x00") >= 0 or (not raw.isascii() and raw.find(b"\xed") >= 0)


def unstorable_fields(value: Any, *, root: str = "body") -> list[FieldProblem]:
    """Every string of a parsed JSON value the database cannot store, by its path
    (`handover.text`, `risk_flags.1`, or `root` for the value itself), in document order.

    A field name that is not storable is reported at the path of the object holding it:
    the name itself is client text and is not repeated. Nor is a name that could not be
    one of ours (not a plain identifier, such as a patient's name sent as a key): its
    place in the path is `*`. The first `MOST_NAMED` are reported: a body made of
    thousands of them must not make the answer thousands of lines long.
    """
    problems: list[FieldProblem] = []
    # Iterative, not recursive: a body nested as deep as the parser allows must not
    # exhaust the stack here.
    pending: list[tuple[tuple[str, ...], Any]] = [((), value)]
    while pending and len(problems) < MOST_NAMED:
        path, item = pending.pop()
        if item is _UNSTORABLE_KEY:
            problems.append(_problem(path, root, KEY_MESSAGE))
        elif isinstance(item, str):
            if not is_storable(item):
                problems.append(_problem(path, root, _message(item)))
        elif isinstance(item, dict):
            pending.extend(
                reversed(
                    [
                        (path, _UNSTORABLE_KEY)
                        if not is_storable(key)
                        else ((*path, _named(key)), child)
                        for key, child in item.items()
                    ]
                )
            )
        elif isinstance(item, list):
            pending.extend(
                reversed([((*path, str(index)), child) for index, child in enumerate(item)])
            )
    return problems


def _named(key: str) -> str:
    return key if _FIELD_NAME.fullmatch(key) else "*"


def _message(text: str) -> str:
    return NUL_MESSAGE if NUL in text else SURROGATE_MESSAGE


def _problem(path: tuple[str, ...], root: str, message: str) -> FieldProblem:
    return FieldProblem(path=".".join(path) or root, message=message)
