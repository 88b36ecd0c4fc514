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
#: A run, possibly the number value of a JSON ``ts`` key (the ``ts`` group then matches).
_PAN_OR_TS = re.compile(rb'(?P<ts>"ts"\s*:\s*)?(?P<run>' + _RUN.encode() + rb")")
#: Cheap scan for stretches of digits, spaces and dashes long enough to hold a PAN.
_CANDIDATE = re.compile(rb"[0-9][0-9 -]{11,}[0-9]")
REDACTED = "[REDACTED-PAN]"
#: Byte translation for the doubled Luhn positions: digit d -> digit sum of 2d, as ASCII.
_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")
_SEPARATORS = b" -"


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


def _luhn_ascii(digits: bytes) -> bool:
    """Luhn over ASCII digits without a Python-level loop (runs on every message)."""
    odd, even = digits[-1::-2], digits[-2::-2].translate(_DOUBLED)
    return (sum(odd) + sum(even) - 48 * len(digits)) % 10 == 0


def _is_pan_bytes(run: bytes) -> bool:
    digits = run.translate(None, _SEPARATORS)
    return 13 <= len(digits) <= 19 and _luhn_ascii(digits)


def _is_pan(run: str) -> bool:
    return _is_pan_bytes(run.encode())


def contains_pan(text: str) -> bool:
    """True when ``text`` holds a Luhn-valid 13-19 digit card number."""
    return any(_is_pan(m.group()) for m in _PAN_STR.finditer(text))


def may_contain_pan(raw: bytes) -> bool:
    """Pre-filter over raw bytes: False means no Luhn-valid 13-19 digit run is anywhere in there.

    True may still be a harmless number (an epoch-ms timestamp is 13 digits), so callers then
    look at the decoded fields; most messages stop here.
    """
    for cand in _CANDIDATE.finditer(raw):
        run = cand.group()
        if run.isdigit():  # the common case (timestamps, ids): one plain run of digits
            if _is_pan_bytes(run):
                return True
            continue
        if any(_is_pan_bytes(m.group()) for m in _PAN_BYTES.finditer(run)):
            return True
    return False


def redact_pans(raw: bytes, keep_ts: int | None = None) -> bytes:
    """Replace every card number in ``raw`` by a marker; everything else is kept.

    ``keep_ts``: the message's event time (epoch ms), which may pass Luhn by chance; a JSON
    ``"ts"`` key whose number value is exactly these digits keeps them. The same digits anywhere
    else (a string, another key) are still redacted.

    >>> redact_pans(b'{"ts":1767227854976,"x":"1767227854976"}', keep_ts=1767227854976)
    b'{"ts":1767227854976,"x":"[REDACTED-PAN]"}'
    """
    keep = str(keep_ts).encode() if keep_ts is not None else None

    def sub(m: re.Match[bytes]) -> bytes:
        run = m.group("run")
        if not _is_pan_bytes(run):
            return m.group()
        if keep is not None and m.group("ts") is not None and run == keep:
            return m.group()
        return (m.group("ts") or b"") + REDACTED.encode()

    return _PAN_OR_TS.sub(sub, raw)
