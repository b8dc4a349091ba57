"""Case references: the pattern the contract gives, and every reference reachable."""

from __future__ import annotations

import pytest

from services.shared.domain import reference
from services.shared.domain.reference import REFERENCE_PATTERN, new_case_reference

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class TestNewCaseReference:
    def test_the_first_and_last_draws_spell_the_first_and_last_references(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        drawn: list[int] = []

        def draw(bound: int) -> int:
            drawn.append(bound)
            return 0 if len(drawn) == 1 else bound - 1

        monkeypatch.setattr(reference, "random_below", draw)
        assert new_case_reference() == "R-0000-00"
        assert new_case_reference() == "R-ZZZZ-99"
        # One draw a reference, over every one of them.
        assert drawn == [32**4 * 100] * 2

    def test_each_place_of_a_draw_spells_its_own_character(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # 7 in the tail, then the head's characters 1, 2, 3, 31 from its lowest place.
        number = 7 + 100 * (1 + 32 * 2 + 32**2 * 3 + 32**3 * 31)
        monkeypatch.setattr(reference, "random_below", lambda _bound: number)
        assert new_case_reference() == "R-123Z-07"

    def test_references_drawn_use_every_character_in_every_place(self) -> None:
        drawn = [new_case_reference() for _ in range(3000)]
        assert all(REFERENCE_PATTERN.match(one) for one in drawn)
        for place in range(2, 6):
            assert {one[place] for one in drawn} == set(_ALPHABET)
        assert {one[-2:] for one in drawn} == {f"{tail:02d}" for tail in range(100)}
