"""Request ids: made fresh for every request, or kept when a caller's is plain."""

from __future__ import annotations

import re

from services.shared.request_context import accept_or_new_request_id, new_request_id


def test_a_new_request_id_is_32_hex_digits_and_never_repeats() -> None:
    made = [new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", one) for one in made)
    assert len(set(made)) == len(made)
    assert {one[0] for one in made} == set("0123")  # 62 random bits in the first 16 digits
    assert len({one[16] for one in made}) == 4


def test_an_id_made_here_is_kept_when_a_proxy_sends_it_back() -> None:
    made = new_request_id()
    assert accept_or_new_request_id(made) == made
    assert accept_or_new_request_id("not plain\n") != "not plain\n"
