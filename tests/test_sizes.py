"""Byte counts as the CLI and the API take them (vmsnap.sizes)."""

import pytest
from hypothesis import given, strategies as st

from vmsnap.errors import UsageError
from vmsnap.sizes import parse_size

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@given(st.integers(0, 2**40), st.sampled_from(sorted(UNITS)), st.sampled_from(["", "B", "iB"]), st.integers(0, 3),
       st.booleans(), st.booleans())
def test_decimal_with_any_unit(n, unit, suffix, zeros, lower, spaced):
    if not unit and suffix == "iB":
        suffix = ""  # "4iB" is not a size
    text = f"{'0' * zeros}{n}{' ' if spaced else ''}{unit}{suffix}"  # leading zeros: still decimal
    assert parse_size(text.lower() if lower else text) == n * UNITS[unit]


@given(st.integers(0, 2**48), st.booleans())
def test_hex_takes_every_hex_digit(n, upper):
    # 0x1B once parsed as 0x1 and a "B" for bytes: `cat --offset 0x1B` read offset 1.
    text = hex(n).upper().replace("0X", "0x") if upper else hex(n)
    assert parse_size(text) == n


def test_hex_with_a_unit():
    assert parse_size("0x10K") == 16 << 10


def test_leading_zeros_are_decimal():
    # int(text, 0) refuses "010": a traceback from every size option
    assert parse_size("010") == 10 and parse_size("0010K") == 10 << 10 and parse_size("0") == 0


@pytest.mark.parametrize("text", ["", "K", "4Q", "-1", "1.5M", "0x", "4 K B", "0xG", "4iB", "\uff14K", "\u00b2", "1e3",
                                  4096.0, True, None])
def test_not_sizes(text):
    with pytest.raises(UsageError, match="is not a size"):
        parse_size(text)


def test_ints_pass_and_negative_ints_do_not():
    assert parse_size(4096) == 4096
    with pytest.raises(UsageError, match="negative"):
        parse_size(-1)
