"""The writer's pipeline stages: the read-ahead thread (order, errors, early exits) and the gather into frames."""

import threading
import time

import numpy as np
import pytest
from hypothesis import given, strategies as st

from vmsnap.errors import InputError
from vmsnap.format.writer import _Ahead


def test_items_come_back_in_order_with_their_results():
    with _Ahead(iter(range(50)), lambda x: x * x, ahead=2) as ahead:
        assert list(ahead) == [(x, x * x) for x in range(50)]


def test_an_error_of_the_thread_is_raised_in_order():
    def items():
        yield 1
        yield 2
        raise InputError("dump.raw: read failed at offset 8192")

    seen = []
    with pytest.raises(InputError, match="read failed at offset 8192"):
        with _Ahead(items(), lambda x: x, ahead=2) as ahead:
            for item, _ in ahead:
                seen.append(item)
    assert seen == [1, 2]


def test_leaving_early_stops_the_thread():
    produced = []

    def work(x):
        produced.append(x)
        return x

    with _Ahead(iter(range(10_000)), work, ahead=2) as ahead:
        for item, _ in ahead:
            if item == 3:
                break
    assert not any(t.name == "vmsnap-analysis" for t in threading.enumerate())
    assert len(produced) < 10  # at most the queue's worth beyond what was taken


def test_a_stalled_source_does_not_hold_up_an_error_exit():
    release = threading.Event()

    def stalled():
        yield 0
        release.wait(30)  # a pipe nobody writes to
        yield 1

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with _Ahead(stalled(), lambda x: x, ahead=2) as ahead:
            for _ in ahead:
                raise KeyboardInterrupt
    assert time.monotonic() - start < 5
    release.set()


@given(st.lists(st.integers(0, 63), max_size=80), st.booleans())
def test_gather_copies_the_rows_in_order(rows, ascending):
    from vmsnap.format.writer import _gather

    pages = np.random.default_rng(7).integers(0, 256, size=(64, 16), dtype=np.uint8)  # rows all differ
    rows = np.array(sorted(rows) if ascending else rows, dtype=np.int64)
    out = np.zeros((len(rows), 16), dtype=np.uint8)
    _gather(pages, rows, out)
    assert np.array_equal(out, pages[rows])
