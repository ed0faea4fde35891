"""argparse ``type=`` converters shared by the CLI's parsers (standard library only: the CLI imports it)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A converter to ``int`` that refuses numbers below ``minimum`` with a message argparse shows."""
    wanted = "a positive integer" if minimum == 1 else f"a whole number >= {minimum}"

    def convert(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value!r}")
        return number

    return convert
