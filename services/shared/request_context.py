"""The current request's id, readable anywhere on the request's task (logs, errors)."""

from __future__ import annotations

import re
from contextvars import ContextVar

from services.shared.randomness import random_bits

_request_id: ContextVar[str | None] = ContextVar("reach_request_id", default=None)

# An id a caller (or a proxy) sent is kept only if it is short and plain, so a header
# can never smuggle patient data or control characters into our logs.
_ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(request_id: str | None) -> object:
    return _request_id.set(request_id)


def reset_request_id(token: object) -> None:
    _request_id.reset(token)  # type: ignore[arg-type]


def new_request_id() -> str:
    """32 hex digits, 124 of their bits random (`services/shared/randomness.py`: no
    system call a request, where `uuid4` made one)."""
    return f"{random_bits(62):016x}{random_bits(62):016x}"


def accept_or_new_request_id(candidate: str | None) -> str:
    if candidate and _ACCEPTABLE_ID.match(candidate):
        return candidate
    return new_request_id()
