"""The ``delay`` query parameter: humantime (``10s``, ``5 min``, ``1h 30m``, ``500ms``) or ISO-8601 (``PT10S``)."""

from __future__ import annotations

import math
import re

MAX_DELAY_MS = 100 * 365 * 86_400_000  # ~100 years: past that a delay is a mistake (and overflows timestamps)
_ISO = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Zµ]+)")
_UNITS = {
    "ms": 1,
    "msec": 1,
    "millis": 1,
    "s": 1000,
    "sec": 1000,
    "secs": 1000,
    "second": 1000,
    "seconds": 1000,
    "m": 60_000,
    "min": 60_000,
    "mins": 60_000,
    "minute": 60_000,
    "minutes": 60_000,
    "h": 3_600_000,
    "hr": 3_600_000,
    "hrs": 3_600_000,
    "hour": 3_600_000,
    "hours": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
    "days": 86_400_000,
}


def parse_delay_ms(text: str) -> int:
    """Milliseconds (at most :data:`MAX_DELAY_MS`), or ValueError with a message fit for a 400 response."""
    total = _parse_ms(text)
    if not math.isfinite(total) or total > MAX_DELAY_MS:
        raise ValueError(f"bad delay {text!r}: longer than the maximum of {MAX_DELAY_MS // 86_400_000} days")
    return int(total)


def _parse_ms(text: str) -> float:
    value = text.strip()
    if not value:
        raise ValueError("empty delay")
    iso = _ISO.match(value)
    if iso and any(iso.group(g) for g in "dhms"):
        total = 0.0
        for group, unit in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
            if iso.group(group):
                total += float(iso.group(group)) * unit
        return total
    pos = 0
    total = 0.0
    while pos < len(value):
        match = _PART.match(value, pos)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(f"bad delay {text!r}: use e.g. 10s, 5min, 1h 30m, 500ms or PT10S")
        total += float(match.group(1)) * _UNITS[match.group(2).lower()]
        pos = match.end()
    return total
