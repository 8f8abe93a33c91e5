"""Valgrind Lackey traces (``valgrind --tool=lackey --trace-mem=yes``).

Record lines, as Lackey prints them::

    I  04000000,3        instruction fetch: 'I' and two blanks
     L 7ff000028,8       data load:   blank, 'L', blank
     S 7ff000030,8       data store
     M 0421ee68,4        data modify (load and store of the same bytes)

then a hexadecimal address (1-16 digits, no ``0x``), a comma, and the size in
bytes (decimal).  Lines starting with ``==`` (Valgrind's own messages, present
when ``--log-file`` collects both) and blank lines are skipped; any other line
is an error naming its line number.

Decisions (documented in the man page):

* ``M`` is **one** access: the load and the store hit the same bytes back to
  back, so a second reference could only ever be an LRU hit at distance 1 and
  would inflate the hit ratio of every cache size alike.
* An access whose bytes ``[addr, addr+size)`` cross a page boundary touches
  every page it covers, in address order (in practice two: Lackey sizes are at
  most a vector register).  A size of 0 counts as 1 byte.
* ``ops`` selects the kinds kept (default ``"ILSM"``: instruction fetches are
  memory accesses too; use ``"LSM"`` for data only).

Two parsers, no Python per line: ``parse_block_fast`` is one compiled numba
pass over the block (the default; the numpy path alone reached 3-6 M lines/s
on this machine, under the 5 M target); ``parse_block`` is vectorised numpy
over the whole block (hex digits gathered into a right-aligned matrix through
a sliding window, turned into nibbles by a lookup table, packed two per byte
and viewed as big-endian u64).  The numpy parser is the reference: it gives
the error messages, and the tests check both parsers agree.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

from ..errors import FormatError, UsageError
from ._io import line_blocks

_LUT = None
BLOCK = 4 << 20  # bytes of whole lines parsed at once (about 250 k lines)


def _lut():
    global _LUT
    if _LUT is None:
        import numpy as np

        lut = np.full(256, 0xFF, dtype=np.uint8)
        for i, c in enumerate(b"0123456789abcdef"):
            lut[c] = i
        for i, c in enumerate(b"ABCDEF"):
            lut[c] = 10 + i
        _LUT = lut
    return _LUT


def sniff(head: bytes) -> bool:
    """True if *head* looks like Lackey output."""
    for line in head.split(b"\n")[:50]:
        if line.startswith(b"=="):
            continue
        if line[:3] in (b"I  ", b" L ", b" S ", b" M ") and b"," in line:
            return True
        if line.strip():
            return False
    return False


def _fail(name, block, starts, ends, bad_idx, first_line, why):
    i = int(bad_idx)
    text = block[int(starts[i]) : int(ends[i])][:60].decode("ascii", "replace")
    raise FormatError(f"{name}: line {first_line + i}: malformed Lackey record ({why}): {text!r}")


def parse_block(block: bytes, name: str, first_line: int, shift: int, ops: str = "ILSM") -> "np.ndarray":
    """Page numbers of every kept access in *block* (whole lines, newline-terminated)."""
    import numpy as np

    lut = _lut()
    pad = 24
    front = 16  # sliding windows may start up to 16 bytes before the block
    padded = np.frombuffer(b"0" * front + block + b"\n" * pad, dtype=np.uint8)
    buf = padded[front:]
    n_bytes = len(block)
    nl = np.flatnonzero(buf[:n_bytes] == 10)
    starts = np.empty(len(nl), dtype=np.int64)
    starts[0] = 0
    starts[1:] = nl[:-1] + 1
    ends = nl.astype(np.int64)
    # Strip a CR before the newline.
    cr = buf[np.maximum(ends - 1, 0)] == 13
    cr &= ends > starts
    ends = ends - cr

    c0 = buf[starts]
    c1 = buf[starts + 1]
    c2 = buf[starts + 2]
    length = ends - starts
    skip = (length == 0) | ((c0 == 61) & (c1 == 61))  # blank or "=="
    instr = (c0 == 73) & (c1 == 32) & (c2 == 32)  # "I  "
    data = (c0 == 32) & ((c1 == 76) | (c1 == 83) | (c1 == 77)) & (c2 == 32)
    rec = instr | data
    bad = ~(rec | skip)
    if bad.any():
        _fail(name, block, starts, ends, np.argmax(bad), first_line, "unknown record kind")

    # Exactly one comma per record line.  Fast path: as many commas as record
    # lines and the k-th comma inside the k-th record line.
    commas = np.flatnonzero(buf[:n_bytes] == 44)
    rec_idx = np.flatnonzero(rec)
    if len(commas) == len(rec_idx) and (
        len(commas) == 0 or ((commas > starts[rec_idx]) & (commas < ends[rec_idx])).all()
    ):
        comma = np.zeros(len(starts), dtype=np.int64)
        comma[rec_idx] = commas
    else:
        comma_line = np.searchsorted(starts, commas, side="right") - 1
        count = np.bincount(comma_line, minlength=len(starts))
        wrong = rec & (count != 1)
        if wrong.any():
            _fail(name, block, starts, ends, np.argmax(wrong), first_line, "expected one ',' between address and size")
        comma = np.zeros(len(starts), dtype=np.int64)
        comma[comma_line] = commas
    # Keep the selected kinds only.
    keep = np.zeros(len(starts), dtype=bool)
    if "I" in ops:
        keep |= instr
    for ch in "LSM":
        if ch in ops:
            keep |= data & (c1 == ord(ch))
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        return np.empty(0, dtype=np.uint64)
    s = starts[idx] + 3
    c = comma[idx]
    e = ends[idx]
    alen = c - s
    slen = e - c - 1
    badlen = (alen < 1) | (alen > 16) | (slen < 1) | (slen > 6)
    if badlen.any():
        _fail(name, block, starts, ends, idx[np.argmax(badlen)], first_line, "address or size field length")

    # Address: right-aligned hex digits ending before the comma, as many
    # columns as the longest address in the block (even, at most 16).
    width = int(alen.max())
    width += width & 1
    # Rows of a sliding window over the buffer: no index matrix is built.
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    nib = lut[windows[c - width + front]]
    valid = np.arange(-width, 0, dtype=np.int64)[None, :] >= (s - c)[:, None]
    badhex = valid & (nib == 0xFF)
    if badhex.any():
        row = np.argmax(badhex.any(axis=1))
        _fail(name, block, starts, ends, idx[row], first_line, "address is not hexadecimal")
    nib = np.where(valid, nib, 0).astype(np.uint8)
    packed = np.zeros((len(idx), 8), dtype=np.uint8)
    packed[:, 8 - width // 2 :] = (nib[:, 0::2] << 4) | nib[:, 1::2]
    addr = packed.view(">u8").reshape(-1).astype(np.uint64)

    # Size: right-aligned decimal digits ending at the line end.
    dwidth = int(slen.max())
    dwin = np.lib.stride_tricks.sliding_window_view(padded, dwidth)
    dig = dwin[e - dwidth + front].astype(np.int64) - 48
    dvalid = np.arange(-dwidth, 0, dtype=np.int64)[None, :] > (c - e)[:, None]
    baddig = dvalid & ((dig < 0) | (dig > 9))
    if baddig.any():
        row = np.argmax(baddig.any(axis=1))
        _fail(name, block, starts, ends, idx[row], first_line, "size is not a decimal number")
    dig = np.where(dvalid, dig, 0)
    size = dig @ (10 ** np.arange(dwidth - 1, -1, -1, dtype=np.int64))
    size = np.maximum(size, 1).astype(np.uint64)

    sh = np.uint64(shift)
    first = addr >> sh
    last = (addr + (size - np.uint64(1))) >> sh
    wrap = last < first  # address + size overflowed 2**64
    if wrap.any():
        _fail(name, block, starts, ends, idx[np.argmax(wrap)], first_line, "access runs past the end of the address space")
    span = last - first
    if not span.any():
        return first
    counts = (span + np.uint64(1)).astype(np.int64)
    out = np.repeat(first, counts)
    offs = np.arange(len(out), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return out + offs.astype(np.uint64)


def parse_block_fast(block: bytes, name: str, first_line: int, shift: int, ops: str = "ILSM") -> "np.ndarray":
    """Same result as parse_block, through the compiled kernel.

    A block the kernel does not accept whole is handed to parse_block, which
    raises the precise error (or returns the pages if the kernel only ran out
    of output room), so both paths accept and reject the same input.
    """
    import numpy as np

    from ._lackey_kernel import parse

    buf = np.frombuffer(block + b"\n\n", dtype=np.uint8)
    keep = np.array([k in ops for k in "ILSM"], dtype=np.bool_)
    out = np.empty(len(block) // 6 + 16, dtype=np.uint64)  # a record line is >= 7 bytes
    n, ok = parse(buf, len(block), shift, keep, _lut(), out)
    if not ok:
        return parse_block(block, name, first_line, shift, ops)
    return out[:n]


def read(stream: BinaryIO, name: str, shift: int, ops: str = "ILSM", compiled: bool = True) -> Iterator["np.ndarray"]:
    bad = set(ops) - set("ILSM")
    if bad or not ops:
        raise UsageError(f"Lackey access kinds must be letters of ILSM, not {ops!r}")
    parse = parse_block_fast if compiled else parse_block
    for block, first_line in line_blocks(stream, BLOCK):
        yield parse(block, name, first_line, shift, ops)
