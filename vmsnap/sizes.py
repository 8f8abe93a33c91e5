"""Byte counts as people write them: 4096, 0x1000, 4K, 4KiB, 32M, 2G (binary multiples)."""

from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# A hex number takes every hex digit, so the B of 0x1B is a digit, not "bytes".
_SIZE = re.compile(r"\s*(?:0x([0-9a-f]+)|([0-9]+))\s*(?:([kmgt])(?:i?b)?|b)?\s*", re.IGNORECASE | re.ASCII)


def parse_size(value: int | str, what: str = "size") -> int:
    """Bytes in `value` (an int is taken as it is); UsageError naming `what` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UsageError(f"{what}: {value} is negative")
        return value
    m = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if not m:
        raise UsageError(f"{what}: {value!r} is not a size (examples: 4096, 0x1000, 4K, 32M)")
    number = int(m.group(1), 16) if m.group(1) is not None else int(m.group(2), 10)  # 010 is ten
    return number * (_UNITS[m.group(3).upper()] if m.group(3) else 1)
