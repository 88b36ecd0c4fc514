"""Find and redact card numbers (PANs) so that none is ever stored or logged in clear.

A PAN is a run of 13-19 digits, optionally grouped by single spaces or dashes, that passes the
Luhn check.

>>> contains_pan("card 4111 1111 1111 1111 used")
True
>>> redact_pans(b"pan=4111111111111111;")
b'pan=[REDACTED-PAN];'
>>> contains_pan("order 1234567890123")  # 13 digits, not Luhn-valid
False
"""

from __future__ import annotations

import re

_RUN = r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])"
_PAN_STR = re.compile(_RUN)
_PAN_BYTES = re.compile(_RUN.encode())
_QUICK = re.compile(rb"[0-9][0-9 -]{11,}[0-9]")
REDACTED = "[REDACTED-PAN]"


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_pan(run: str) -> bool:
    digits = run.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def contains_pan(text: str) -> bool:
    """True when ``text`` holds a Luhn-valid 13-19 digit card number."""
    return any(_is_pan(m.group()) for m in _PAN_STR.finditer(text))


def may_contain_pan(raw: bytes) -> bool:
    """Cheap pre-filter over raw bytes: False means no PAN can be in there."""
    return _QUICK.search(raw) is not None


def redact_pans(raw: bytes) -> bytes:
    """Replace every card number in ``raw`` by a marker; everything else is kept."""
    if not may_contain_pan(raw):
        return raw
    return _PAN_BYTES.sub(
        lambda m: REDACTED.encode() if _is_pan(m.group().decode()) else m.group(), raw
    )
