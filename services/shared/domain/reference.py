"""Short human case references, readable over a radio: `R-7KQ2-91`."""

from __future__ import annotations

import re
import secrets

# Crockford-style: no I, L, O or U, which are misheard or misread as 1, 0 or V.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REFERENCE_PATTERN = re.compile(r"^R-[0-9A-HJKMNP-TV-Z]{4}-\d{2}$")


def new_case_reference() -> str:
    head = "".join(secrets.choice(_ALPHABET) for _ in range(4))
    tail = f"{secrets.randbelow(100):02d}"
    return f"R-{head}-{tail}"
