"""NHS number validation: ten digits with a modulus-11 check digit."""

from __future__ import annotations

import re

# Ten digits, optionally grouped 3-3-4 with a space or a dash between groups.
_GROUPED = re.compile(r"^(\d{3})[ -]?(\d{3})[ -]?(\d{4})$")


class InvalidNhsNumberError(ValueError):
    """Raised for a malformed or failing NHS number. Its message never repeats the number."""


def normalise_nhs_number(raw: str) -> str:
    """Return the ten digits of a valid NHS number, or raise `InvalidNhsNumberError`.

    Args:
        raw: the number as typed, e.g. "943 476 5919" or "943-476-5919".
    """
    match = _GROUPED.match(raw.strip())
    if match is None:
        raise InvalidNhsNumberError("an NHS number is ten digits, optionally grouped 3-3-4")
    digits = "".join(match.groups())
    if len(set(digits)) == 1:
        raise InvalidNhsNumberError("an NHS number cannot be one digit repeated")
    if not _check_digit_matches(digits):
        raise InvalidNhsNumberError("the NHS number's check digit does not match")
    return digits


def is_valid_nhs_number(raw: str) -> bool:
    try:
        normalise_nhs_number(raw)
    except InvalidNhsNumberError:
        return False
    return True


def _check_digit_matches(digits: str) -> bool:
    total = sum(
        int(digit) * weight for digit, weight in zip(digits[:9], range(10, 1, -1), strict=True)
    )
    check = 11 - (total % 11)
    if check == 11:
        check = 0
    if check == 10:
        return False
    return check == int(digits[9])
