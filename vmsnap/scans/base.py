"""The stream every scan-series reader yields: one accessed-page bitmap per scan period.

A scan series covers a fixed set of ``n_pages`` pages of ``page_size`` bytes.
Page numbers are dense (0 .. n_pages-1); ``segments`` maps them back to
addresses (one segment for a flat physical range, several for a DAMON virtual
address space with holes or a multi-region dump). Readers yield periods in
time order, one at a time, so an analysis holds one bitmap, never the series.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterator, Sequence


@dataclass(frozen=True)
class Segment:
    """Pages first_page .. first_page+n_pages-1 start at address `base`, contiguous."""

    name: str
    base: int
    first_page: int
    n_pages: int


@dataclass
class Period:
    """One scan period: which pages were accessed during it."""

    index: int  # 0-based position in the series
    timestamp_ns: int | None  # end of the period, when the reader knows it
    accessed: "object"  # numpy bool array, shape (n_pages,), True = accessed in this period


class ScanSeries(abc.ABC):
    """An opened scan series. Use as a context manager; iterate periods() once."""

    #: short format name: "series", "idle", "damon", "dumps"
    format_name: str = "?"

    def __init__(self, inputs: Sequence[str], page_size: int):
        self.inputs = list(inputs)
        self.page_size = page_size

    @property
    @abc.abstractmethod
    def n_pages(self) -> int:
        """Number of pages every period's bitmap covers."""

    @property
    def segments(self) -> list[Segment]:
        return [Segment("pages", 0, 0, self.n_pages)]

    @property
    def n_periods(self) -> int | None:
        """Number of periods, when known before iterating (progress bars)."""
        return None

    @property
    def held_bytes_per_page(self) -> int:
        """Bytes a page that the reader itself keeps while the periods are read (the
        memory check adds them to the analysis's own state)."""
        return 0

    @abc.abstractmethod
    def periods(self) -> Iterator[Period]:
        """Yield the periods in time order."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "ScanSeries":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pack_bitmap(accessed) -> bytes:
    """Bool array -> bytes, bit i of the result is page i (LSB first within a byte)."""
    import numpy as np

    return np.packbits(np.asarray(accessed, dtype=bool), bitorder="little").tobytes()


def unpack_bitmap(data, n_pages: int):
    """Inverse of pack_bitmap: bytes (at least ceil(n_pages/8) long) -> bool array."""
    import numpy as np

    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n_pages, bitorder="little")
    return bits.view(bool)
