"""Short human case references, readable over a radio: `R-7KQ2-91`."""

from __future__ import annotations

import re

from services.shared.randomness import random_below

# Crockford-style: no I, L, O or U, which are misheard or misread as 1, 0 or V.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_HEAD_LENGTH = 4
_TAILS = 100  # two digits
_REFERENCES = len(_ALPHABET) ** _HEAD_LENGTH * _TAILS
REFERENCE_PATTERN = re.compile(r"^R-[0-9A-HJKMNP-TV-Z]{4}-\d{2}$")


def new_case_reference() -> str:
    """One of the 104,857,600 references, each as likely: a single draw from the
    system's randomness, spelt out (a draw for each character and the digits read it
    five times)."""
    number, tail = divmod(random_below(_REFERENCES), _TAILS)
    head = ""
    for _ in range(_HEAD_LENGTH):
        number, digit = divmod(number, len(_ALPHABET))
        head += _ALPHABET[digit]
    return f"R-{head}-{tail:02d}"
