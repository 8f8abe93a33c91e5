"""Trace readers: every format against a by-construction reference, malformed
input naming its line or byte offset, zstd by magic, format detection."""

from __future__ import annotations

import io
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from vmsnap.errors import FormatError, InputError, UsageError
from vmsnap.traces import detect_format, lackey, open_trace
from vmsnap.traces.oracle_general import dtype as og_dtype
from vmsnap.traces.oracle_general import write as og_write

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def pages_of(path, **kw):
    chunks = list(open_trace(path, **kw))
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.uint64)


# ---------------------------------------------------------------- Lackey

record = st.tuples(
    st.sampled_from("ILSM"),
    st.integers(0, (1 << 48) - 1),
    st.integers(0, 64),
    st.integers(0, 3),  # junk lines before: 0 none, 1 "==pid==", 2 blank, 3 none
)


def lackey_text(recs, crlf=False):
    out = []
    for kind, addr, size, junk in recs:
        if junk == 1:
            out.append("==4242== some valgrind message, with a comma")
        elif junk == 2:
            out.append("")
        prefix = "I  " if kind == "I" else f" {kind} "
        out.append(f"{prefix}{addr:08x},{size}")
    nl = "\r\n" if crlf else "\n"
    return (nl.join(out) + nl).encode()


def lackey_expected(recs, shift, ops="ILSM"):
    out = []
    for kind, addr, size, _ in recs:
        if kind not in ops:
            continue
        first = addr >> shift
        last = (addr + max(size, 1) - 1) >> shift
        out.extend(range(first, last + 1))
    return np.array(out, dtype=np.uint64)


@SETTINGS
@given(recs=st.lists(record, max_size=200), shift=st.sampled_from([12, 21, 4]), crlf=st.booleans(),
       ops=st.sampled_from(["ILSM", "LSM", "S", "IM"]))
def test_lackey_matches_reference(tmp_path, recs, shift, crlf, ops):
    p = tmp_path / "t.lackey"
    p.write_bytes(lackey_text(recs, crlf))
    got = pages_of(p, page_size=1 << shift, lackey_ops=ops)
    assert np.array_equal(got, lackey_expected(recs, shift, ops))


def test_lackey_blocks_split_anywhere(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    recs = [("ILSM"[k], int(a), int(s), int(j)) for k, a, s, j in
            zip(rng.integers(0, 4, 3000), rng.integers(0, 1 << 40, 3000), rng.integers(1, 33, 3000),
                rng.integers(0, 4, 3000))]
    p = tmp_path / "t.lackey"
    p.write_bytes(lackey_text(recs))
    whole = pages_of(p)
    monkeypatch.setattr(lackey, "BLOCK", 97)  # blocks end mid-line: carry must work
    assert np.array_equal(pages_of(p), whole)
    assert np.array_equal(whole, lackey_expected(recs, 12))


def test_lackey_page_crossing_touches_both_pages(tmp_path):
    p = tmp_path / "t.lackey"
    p.write_bytes(b" L 00000ffe,4\n M 00001000,4\n")
    assert pages_of(p).tolist() == [0, 1, 1]  # M counts once
    assert pages_of(p, page_size=2 << 20).tolist() == [0, 0]


@pytest.mark.parametrize(
    "bad, why",
    [
        (b" X 1000,4", "unknown record kind"),
        (b" L 1000 4", "','"),
        (b" L 10,00,4", "','"),
        (b" L 10g0,4", "hexadecimal"),
        (b" L 1000,4a", "decimal"),
        (b" L 1000,", "length"),
        (b" L ,4", "length"),
        (b" L 11112222333344445,4", "length"),
        (b"garbage", "unknown record kind"),
        (b" L ffffffffffffffff,8", "address space"),
    ],
)
def test_lackey_malformed_names_line(tmp_path, bad, why):
    good = b"I  04000000,3\n L 7ff000028,8\n==1== x\n"
    p = tmp_path / "bad.lackey"
    p.write_bytes(good * 3 + bad + b"\n" + good)
    with pytest.raises(FormatError) as e:
        pages_of(p)
    assert "line 10:" in str(e.value) and why in str(e.value)


def test_lackey_bad_ops_is_usage_error(tmp_path):
    p = tmp_path / "t.lackey"
    p.write_bytes(b"I  0,1\n")
    with pytest.raises(UsageError):
        pages_of(p, lackey_ops="X")


# ---------------------------------------------------------------- text and CSV

@SETTINGS
@given(vals=st.lists(st.integers(0, (1 << 64) - 1), max_size=100), hexes=st.lists(st.booleans(), min_size=100, max_size=100),
       shift=st.sampled_from([12, 21]))
def test_text_matches_reference(tmp_path, vals, hexes, shift):
    lines = [f"  {v:#x} " if h else str(v) for v, h in zip(vals, hexes)]
    p = tmp_path / "t.txt"
    p.write_text("# comment\n\n" + "\n".join(lines) + "\n")
    assert pages_of(p, page_size=1 << shift).tolist() == [v >> shift for v in vals]
    assert pages_of(p, page_size=1 << shift, values="page").tolist() == vals


@pytest.mark.parametrize("bad", ["12ab", "0xzz", "-5", str(1 << 64), "1.5"])
def test_text_malformed_names_line(tmp_path, bad):
    p = tmp_path / "t.txt"
    p.write_text("1\n2\n\n" + bad + "\n3\n")
    with pytest.raises(FormatError, match="line 4:"):
        pages_of(p)


def test_csv_columns_and_header(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("time,addr,size\n1,0x1000,8\n2,8192,8\n3,0x3fff,8\n")
    assert pages_of(p, column="addr").tolist() == [1, 2, 3]
    assert pages_of(p, column=2).tolist() == [1, 2, 3]  # header found: field not a number
    assert pages_of(p, column="2", values="page").tolist() == [0x1000, 8192, 0x3FFF]
    q = tmp_path / "n.csv"
    q.write_text("5;4096\n6;8192\n")
    assert pages_of(q, column=2, delimiter=";").tolist() == [1, 2]


def test_csv_errors(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("time,addr\n1,0x1000\n2,zz\n")
    with pytest.raises(FormatError, match="line 3:"):
        pages_of(p, column="addr")
    with pytest.raises(FormatError, match="no column named 'nope'"):
        pages_of(p, column="nope")
    q = tmp_path / "s.csv"
    q.write_text("1,2\n3\n")
    with pytest.raises(FormatError, match="line 2: only 1 fields"):
        pages_of(q, column=2)
    # A field over the csv module's 128 KiB limit was its own error, a traceback.
    r = tmp_path / "big.csv"
    r.write_text("1,2\n3," + "9" * 200_000 + "\n")
    with pytest.raises(FormatError, match="line 2: field larger than field limit"):
        pages_of(r, column=1)


# ---------------------------------------------------------------- binary formats

@SETTINGS
@given(vals=st.lists(st.integers(0, (1 << 64) - 1), max_size=300))
def test_u64_round_trip(tmp_path, vals):
    from vmsnap.traces._io import ZSTD_START, is_zstd_start

    p = tmp_path / "t.u64"
    a = np.array(vals, dtype="<u8")
    # Compression is found from content: a trace that starts as a valid zstd frame does is
    # read as one (test_a_trace_starting_with_the_zstd_magic_alone_is_plain covers the rest).
    assume(not is_zstd_start(a.tobytes()[:ZSTD_START]))
    p.write_bytes(a.tobytes())
    assert pages_of(p).tolist() == [v >> 12 for v in vals]
    assert pages_of(p, values="page").tolist() == vals


def test_u64_partial_value_names_offset(tmp_path):
    p = tmp_path / "t.u64"
    p.write_bytes(np.arange(5, dtype="<u8").tobytes() + b"\x01\x02\x03")
    with pytest.raises(InputError, match="byte offset 40"):
        pages_of(p)


def test_oracle_general_layout_and_zero_sizes(tmp_path):
    p = tmp_path / "t.oracleGeneral"
    og_write(p, [7, 8, 9, 7])
    raw = p.read_bytes()
    assert len(raw) == 4 * 24 and og_dtype().itemsize == 24
    # Field offsets of the packed record: u32 time, u64 id at 4, u32 size at 12, i64 next at 16.
    assert int.from_bytes(raw[24 + 4 : 24 + 12], "little") == 8
    assert int.from_bytes(raw[12:16], "little") == 4096
    assert pages_of(p).tolist() == [7, 8, 9, 7]
    rec = np.frombuffer(raw, dtype=og_dtype()).copy()
    rec["obj_size"][1] = 0
    p.write_bytes(rec.tobytes())
    assert pages_of(p).tolist() == [7, 9, 7]
    assert pages_of(p, values="address").tolist() == [0, 0, 0]
    p.write_bytes(rec.tobytes()[:-5])
    with pytest.raises(InputError, match="byte offset 72"):
        pages_of(p)


# ---------------------------------------------------------------- zstd, detection

@pytest.mark.parametrize("name, data, kw", [
    ("a.lackey", b"I  1000,4\n L 2000,8\n", {}),
    ("a.txt", b"4096\n0x2000\n", {}),
    ("a.csv", b"1,4096\n2,0x3000\n", {"column": 2}),
    ("a.u64", np.arange(10, dtype="<u8").tobytes() * 500, {}),
])
def test_zstd_by_magic_gives_same_pages(tmp_path, name, data, kw):
    plain = tmp_path / name
    plain.write_bytes(data)
    comp = tmp_path / ("z-" + name.replace(".", "-"))  # no .zst suffix: magic decides
    comp.write_bytes(zstandard.ZstdCompressor().compress(data) + zstandard.ZstdCompressor().compress(data))
    fmt = detect_format(plain)
    a = pages_of(plain, **kw)
    b = pages_of(comp, fmt=fmt, **kw)
    assert np.array_equal(np.concatenate([a, a]), b)  # two frames read across
    t = open_trace(comp, fmt=fmt, **kw)
    list(t)
    assert t.compressed


def test_corrupt_zstd_is_input_error(tmp_path):
    data = zstandard.ZstdCompressor().compress(b"I  1000,4\n" * 1000)
    p = tmp_path / "c.lackey"
    p.write_bytes(data[:20] + b"\xff" * 10 + data[30:])
    with pytest.raises(InputError, match="corrupt zstd"):
        pages_of(p)


def test_detection_by_content(tmp_path):
    cases = {
        "l": b"==1== Lackey\nI  04000000,3\n",
        "t": b"# addresses\n4096\n",
        "c": b"a,b\n1,2\n",
        "b": np.arange(4, dtype="<u8").tobytes(),
    }
    want = {"l": "lackey", "t": "text", "c": "csv", "b": "u64"}
    for k, data in cases.items():
        (tmp_path / k).write_bytes(data)
        assert detect_format(tmp_path / k) == want[k]
        (tmp_path / (k + "z")).write_bytes(zstandard.ZstdCompressor().compress(data))
        assert detect_format(tmp_path / (k + "z")) == want[k]
    assert detect_format(tmp_path / "x.oracleGeneral.zst") == "oracleGeneral"


def test_open_errors(tmp_path):
    with pytest.raises(InputError):
        open_trace(tmp_path / "missing", fmt="text")
    (tmp_path / "a.txt").write_text("1\n")
    with pytest.raises(UsageError):
        open_trace(tmp_path / "a.txt", page_size=3000)
    with pytest.raises(UsageError):
        open_trace(tmp_path / "a.txt", fmt="nope")
    with pytest.raises(UsageError):
        open_trace(tmp_path / "a.txt", fmt="lackey", values="page")


@SETTINGS
@given(recs=st.lists(record, min_size=1, max_size=60), pos=st.integers(0, 10_000),
       byte=st.sampled_from(list(b"0123456789abcdefxILSM ,=\r\n\t-")), ops=st.sampled_from(["ILSM", "LS"]))
def test_lackey_compiled_and_numpy_parsers_agree(recs, pos, byte, ops):
    """Mutate one byte of a valid trace: both parsers give the same pages or both reject it."""
    data = bytearray(lackey_text(recs))
    data[pos % len(data)] = byte
    if not data.endswith(b"\n"):
        data += b"\n"
    block = bytes(data)
    results = []
    for parse in (lackey.parse_block, lackey.parse_block_fast):
        try:
            results.append(parse(block, "m", 1, 12, ops).tolist())
        except FormatError as exc:
            results.append(str(exc))
    assert results[0] == results[1]


# ---------------------------------------------------------------- stdin and FIFOs

def _fifo(tmp_path, data, name="trace.fifo"):
    import os
    import threading

    path = tmp_path / name
    os.mkfifo(path)

    def feed():
        try:
            with open(path, "wb") as fh:
                fh.write(data)
        except BrokenPipeError:
            pass

    threading.Thread(target=feed, daemon=True).start()
    return path


@pytest.mark.parametrize("name, data, kw", [
    ("a.lackey", b"==1== Lackey\nI  1000,4\n L 2000,8\n" * 3000, {}),
    ("a.txt", b"4096\n0x2000\n" * 5000, {}),
    ("a.csv", b"1,4096\n2,0x3000\n" * 5000, {"column": 2}),
    ("a.u64", np.arange(10, dtype="<u8").tobytes() * 5000, {}),
])
@pytest.mark.parametrize("compressed", [False, True])
def test_a_fifo_trace_reads_like_its_file_format_found_from_content(tmp_path, name, data, kw, compressed):
    plain = tmp_path / name
    plain.write_bytes(data)
    want = pages_of(plain, **kw)
    stream = zstandard.ZstdCompressor().compress(data) if compressed else data
    trace = open_trace(_fifo(tmp_path, stream), **kw)  # no name hint: ".fifo"
    assert trace.fmt == detect_format(plain) and trace.compressed == compressed
    got = np.concatenate(list(trace))
    assert np.array_equal(got, want)  # nothing lost to detection: its bytes were read again
    with pytest.raises(UsageError, match="read only once"):
        list(trace)


def test_stdin_trace(tmp_path, monkeypatch):
    import sys

    data = b"I  1000,4\n L 2000,8\n" * 100
    (tmp_path / "a.lackey").write_bytes(data)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(_Unseekable(data))))
    trace = open_trace("-")
    assert trace.fmt == "lackey"
    assert np.array_equal(np.concatenate(list(trace)), pages_of(tmp_path / "a.lackey"))


class _Unseekable(io.RawIOBase):
    """A pipe's bytes: readable once, not seekable."""

    def __init__(self, data):
        self._data = memoryview(data)

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), len(self._data), 1000)  # short reads, as a pipe gives
        b[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


SKIPPABLE = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"skip!"


def _frames(parts, checksum, with_size):
    """[(frame bytes, the part it holds or None)]: each part its own zstd frame, with or
    without checksum and content size, and a skippable frame after the first."""
    c = zstandard.ZstdCompressor(write_checksum=checksum, write_content_size=with_size)
    out = []
    for i, part in enumerate(parts):
        if with_size:
            out.append((c.compress(part), part))
        else:  # streamed: the frame header holds no content size
            obj = c.compressobj()
            out.append((obj.compress(part) + obj.flush(), part))
        if i == 0:
            out.append((SKIPPABLE, None))
    return out


@SETTINGS
@given(n_parts=st.integers(1, 3), checksum=st.booleans(), with_size=st.booleans(),
       seed=st.integers(0, 2**32 - 1), cut=st.floats(0, 1))
# cut inside the first frame header: too short to tell a frame start from a binary trace's
# first address, so a text trace used to be read as text ("not a number")
@example(n_parts=1, checksum=False, with_size=False, seed=8316, cut=0.00390625)
def test_a_zstd_trace_cut_anywhere_is_an_error_or_its_whole_frames(tmp_path, n_parts, checksum, with_size, seed, cut):
    rng = np.random.default_rng(seed)
    parts = [b"".join(b"%d\n" % v for v in rng.integers(0, 1 << 20, int(rng.integers(1, 3000))))
             for _ in range(n_parts)]
    frames = _frames(parts, checksum, with_size)
    blob = b"".join(f for f, _ in frames)
    end = int(cut * len(blob))
    (tmp_path / "t.txt").write_bytes(blob[:end])
    boundaries = np.cumsum([len(f) for f, _ in frames]).tolist()
    if 0 < end < 4:  # not even the magic: read as text, and refused as such
        with pytest.raises(FormatError):
            pages_of(tmp_path / "t.txt", values="page")
        return
    if end != 0 and end not in boundaries:
        with pytest.raises(InputError, match="truncated zstd stream|corrupt zstd"):
            pages_of(tmp_path / "t.txt", values="page")
        return
    whole = b"".join(part for (_, part), b in zip(frames, boundaries) if part is not None and b <= end)
    (tmp_path / "want.txt").write_bytes(whole)
    assert np.array_equal(pages_of(tmp_path / "t.txt", values="page"), pages_of(tmp_path / "want.txt", values="page"))


@pytest.mark.parametrize("first", [0xFD2FB528, 0x7FFFFD2FB528, 0x7FFEFD2FB528])
def test_a_trace_starting_with_the_zstd_magic_alone_is_plain(tmp_path, first):
    """Its first address ends in fd2fb528, the zstd magic, and what follows is no valid
    zstd frame header (a reserved bit set, or a block larger than its window)."""
    for vals in ([first], [first, 1], [first, 0x7FFFFD2FB530, 0x1000]):
        p = tmp_path / "t.u64"
        p.write_bytes(np.array(vals, dtype="<u8").tobytes())
        assert pages_of(p, values="page").tolist() == vals


@SETTINGS
@given(data=st.binary(max_size=3000), level=st.integers(1, 19), checksum=st.booleans(),
       content_size=st.booleans(), streamed=st.booleans())
def test_every_zstd_stream_is_recognised(data, level, checksum, content_size, streamed):
    import zstandard

    from vmsnap.traces._io import ZSTD_START, is_zstd_start

    c = zstandard.ZstdCompressor(level=level, write_checksum=checksum, write_content_size=content_size)
    if streamed:  # no content size in the header: a window descriptor instead
        cobj = c.compressobj()
        blob = cobj.compress(data) + cobj.flush()
    else:
        blob = c.compress(data)
    assert is_zstd_start(blob[:ZSTD_START])
