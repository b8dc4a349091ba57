from __future__ import annotations

import pytest

from services.shared.domain.nhs_number import (
    InvalidNhsNumberError,
    is_valid_nhs_number,
    normalise_nhs_number,
)


class TestNhsNumber:
    @pytest.mark.parametrize(
        "raw",
        [
            "9434765919",
            "4010232137",
            "943 476 5919",
            "943-476-5919",
            " 9434765919 ",
            "943 476-5919",
        ],
    )
    def test_valid_numbers_normalise_to_ten_digits(self, raw: str) -> None:
        assert normalise_nhs_number(raw) in ("9434765919", "4010232137")

    @pytest.mark.parametrize(
        "raw",
        [
            "9434765918",  # wrong check digit
            "1000000010",  # check digit would be 10
            "0000000000",
            "9999999999",
            "1111111111",
            "943476591",  # nine digits
            "94347659190",  # eleven digits
            "94 347 65919",  # not the 3-3-4 grouping
            "943.476.5919",
            "943476591X",
            "",
        ],
    )
    def test_invalid_numbers_are_refused(self, raw: str) -> None:
        assert not is_valid_nhs_number(raw)
        with pytest.raises(InvalidNhsNumberError):
            normalise_nhs_number(raw)

    def test_an_all_same_digit_number_passing_the_checksum_is_refused(self) -> None:
        # 5555555555: 5 x (10+...+2) = 270, 270 mod 11 = 6, check 5 - it passes modulus 11.
        with pytest.raises(InvalidNhsNumberError, match="repeated"):
            normalise_nhs_number("5555555555")

    def test_the_message_never_repeats_the_number(self) -> None:
        with pytest.raises(InvalidNhsNumberError) as caught:
            normalise_nhs_number("9434765918")
        assert "9434765918" not in str(caught.value)
