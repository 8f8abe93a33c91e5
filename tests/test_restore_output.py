"""Restore's output path: pieces placed by a writer thread, O_DIRECT and its fallback, errors."""

import errno
import io
import os
import re
import random
import subprocess
import sys
import threading

import pytest

from vmsnap import api, output
from vmsnap.errors import OutputError
from vmsnap.format.reader import Snapshot

from conftest import build_image, pwrites_direct


def writer_threads():
    return [t for t in threading.enumerate() if t.name == "vmsnap-writer"]


def pieces_with_gaps(seed, count=200):
    """(offset, bytes) in increasing offsets, unaligned sizes and gaps; and the image they make."""
    rng = random.Random(seed)
    pos, pieces, image = 0, [], bytearray()
    for _ in range(count):
        pos += rng.choice([0, 0, 1, 511, 4096, 5000, 70000])
        data = rng.randbytes(rng.choice([1, 100, 4096, 9000, 40000]))
        pieces.append((pos, data))
        image[len(image):] = bytes(pos - len(image)) + data
        pos += len(data)
    return pieces, bytes(image) + bytes(3000)


@pytest.fixture
def small_buffers(monkeypatch):
    monkeypatch.setattr(output, "BUFFER_BYTES", 16384)  # many buffer boundaries in a small image


def write_file(path, pieces, size):
    """Write (offset, bytes) pieces through an ImageWriter into a new regular file."""
    with open(path, "wb") as fh:
        writer = output.ImageWriter(fh, positioned=True)
        for offset, data in pieces:
            writer.write(offset, data)
        writer.close(size)
    return path


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_pieces_land_at_their_offsets(tmp_path, small_buffers, monkeypatch, direct, seed):
    if not direct:
        monkeypatch.setattr(output, "_set_direct", lambda fd, on: False)  # a file system without O_DIRECT
    pieces, image = pieces_with_gaps(seed)
    path = write_file(tmp_path / "out", pieces, len(image))
    assert path.read_bytes() == image
    assert writer_threads() == []


def test_a_stream_gets_exactly_the_bytes(small_buffers):
    pieces, _ = pieces_with_gaps(7)
    stream, pos, expected = io.BytesIO(), 0, bytearray()
    writer = output.ImageWriter(stream, positioned=False)
    for _, data in pieces:  # a stream takes contiguous pieces
        writer.write(pos, data)
        pos += len(data)
        expected += data
    writer.close(pos)
    assert stream.getvalue() == expected


def test_restore_writes_with_o_direct_where_the_file_system_allows(tmp_path, monkeypatch):
    data = build_image([("random", 1), ("zero",), ("random", 2)], tail=b"xyz")
    (tmp_path / "in.raw").write_bytes(data)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    flags = pwrites_direct(tmp_path, monkeypatch, lambda: api.restore(str(tmp_path / "s.vms"), str(tmp_path / "out.raw")))
    assert flags and all(flags)
    assert (tmp_path / "out.raw").read_bytes() == data


def test_a_refused_direct_write_is_retried_buffered(tmp_path, small_buffers, monkeypatch):
    """Some file systems accept O_DIRECT at open and refuse the write with EINVAL."""
    pieces, image = pieces_with_gaps(3)
    real, refused, direct = os.pwrite, [], {"on": False}

    def set_direct(fd, on):  # the file system "accepts" O_DIRECT
        direct["on"] = on
        return on

    def pwrite(fd, data, offset):
        if direct["on"]:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(output, "_set_direct", set_direct)
    monkeypatch.setattr(os, "pwrite", pwrite)
    path = write_file(tmp_path / "out", pieces, len(image))
    assert refused == [0] and not direct["on"]
    assert path.read_bytes() == image


@pytest.fixture
def snapshot(tmp_path):
    data = build_image([("random", i) for i in range(64)] + [("zero",)] * 8 + [("random", 99)])
    (tmp_path / "in.raw").write_bytes(data)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    return str(tmp_path / "s.vms")


@pytest.mark.parametrize("sparse", [True, False])
def test_a_write_error_in_the_writer_thread_is_one_output_error(tmp_path, snapshot, small_buffers, monkeypatch,
                                                                 sparse):
    real = output.pwrite_all
    calls = []

    def full_after_two(fd, data, offset):
        calls.append(offset)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(output, "pwrite_all", full_after_two)
    before = sorted(os.listdir(tmp_path))
    out = tmp_path / "out.raw"
    with pytest.raises(OutputError, match=f"^{re.escape(str(out))}: no space left on device$"):  # names the file
        api.restore(snapshot, str(out), sparse=sparse)
    assert sorted(os.listdir(tmp_path)) == before
    assert writer_threads() == []


def test_interrupted_restore_leaves_no_file(tmp_path, snapshot, small_buffers, monkeypatch):
    real = Snapshot.produce

    def produce_then_interrupt(self, sink, regions=None, **kw):
        def interrupting_sink(region, piece):
            sink(region, piece)
            if sink.pos > 100000:
                raise KeyboardInterrupt
        real(self, interrupting_sink, regions, **kw)

    monkeypatch.setattr(Snapshot, "produce", produce_then_interrupt)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        api.restore(snapshot, str(tmp_path / "out.raw"))
    assert sorted(os.listdir(tmp_path)) == before
    assert writer_threads() == []


def _restore_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vmsnap.cli", "restore", *args], stderr=subprocess.PIPE, **kw)


def _one_line(stderr):
    return stderr.count(b"\n") == 1 and b"Traceback" not in stderr


def test_a_file_size_limit_is_an_output_error_and_leaves_no_file(tmp_path, snapshot):
    """A real OS error (EFBIG) raised in the writer thread of a separate process."""
    import resource

    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))  # noqa: E731
    before = sorted(os.listdir(tmp_path))
    p = _restore_cli(snapshot, "-o", str(tmp_path / "out.raw"), preexec_fn=limit)
    assert p.returncode == OutputError.exit_code
    assert p.stderr == f"vmsnap: error: {tmp_path / 'out.raw'}: File too large\n".encode()
    assert sorted(os.listdir(tmp_path)) == before


def test_restore_to_a_full_device_is_an_output_error(snapshot):
    with open("/dev/full", "wb") as full:
        p = _restore_cli(snapshot, "-o", "-", stdout=full)
    assert p.returncode == OutputError.exit_code
    assert p.stderr == b"vmsnap: error: stdout: no space left on device\n"


def test_restore_into_a_closed_pipe_is_an_output_error(snapshot):
    p = subprocess.run(f"{sys.executable} -m vmsnap.cli restore {snapshot} -o - | head -c 10 > /dev/null; "
                       "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", stderr=subprocess.PIPE)
    assert p.returncode == OutputError.exit_code
    assert p.stderr == b"vmsnap: error: stdout: broken pipe\n"


def test_ctrl_c_while_the_reader_of_stdout_stalls_exits_130(tmp_path):
    import signal
    import time

    raw = tmp_path / "in.raw"
    raw.write_bytes(build_image([("fill", 1)]) * (48 << 8))  # 48 MiB: more than the pipe and the buffers hold
    api.save(str(raw), str(tmp_path / "s.vms"))
    stalled, keep = os.pipe()  # nobody reads `stalled`
    try:
        proc = subprocess.Popen([sys.executable, "-m", "vmsnap.cli", "restore", str(tmp_path / "s.vms"), "-o", "-"],
                                stdout=keep, stderr=subprocess.PIPE)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert _one_line(proc.stderr.read())
    finally:
        os.close(stalled)
        os.close(keep)


def test_short_zero_runs_are_written_and_long_ones_stay_holes(tmp_path, monkeypatch):
    """A hole per single zero page would be a write per data page; runs of at least
    MIN_HOLE stay holes."""
    alternating = [("random", 10 + i) if i % 2 == 0 else ("zero",) for i in range(512)]  # 2 MiB
    data = build_image(alternating + [("zero",)] * 1024 + alternating)  # then 4 MiB of zeros, then 2 MiB
    (tmp_path / "in.raw").write_bytes(data)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    writes, real = [], os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, buf, offset: writes.append(len(buf)) or real(fd, buf, offset))
    out = tmp_path / "out.raw"
    api.restore(str(tmp_path / "s.vms"), str(out))
    assert out.read_bytes() == data
    assert len(writes) <= 4, writes  # 512 writes of 4 KiB before
    assert sum(writes) <= len(data) - (4 << 20)  # the long run was not written
    assert os.stat(out).st_blocks * 512 <= len(data) - (4 << 20) + (64 << 10)


def test_pieces_of_a_page_or_two_reach_the_sink_joined(tmp_path):
    import vmsnap

    alternating = [("random", 10 + i) if i % 2 == 0 else ("zero",) for i in range(1024)]  # 4 MiB
    data = build_image(alternating)
    (tmp_path / "in.raw").write_bytes(data)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    seen = []
    with vmsnap.open(str(tmp_path / "s.vms")) as snap:
        assert snap.stats()["records"] == 1024
        snap.produce(lambda region, piece: seen.append(bytes(piece)))
    assert b"".join(seen) == data
    assert len(seen) <= 4  # not a piece per record


@pytest.mark.parametrize("jobs", [1, 2, 4])
def test_a_restore_decodes_into_at_most_decoders_plus_three_frame_buffers(tmp_path, monkeypatch, jobs):
    # Two frames kept for pieces, one being decoded per decoder, one retired until its
    # piece is consumed. Each buffer is a frame of memory (16 MiB by default), touched anew.
    from vmsnap.format import reader

    data = build_image([("random", i) for i in range(64)])
    (tmp_path / "in.raw").write_bytes(data)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"), frame_size=4 * 4096)  # 16 frames
    made = []
    take = reader._FramePool.take

    def counting_take(pool, nbytes):
        with pool._lock:
            made.append(not any(len(b) >= nbytes for b in pool._free))
        return take(pool, nbytes)

    monkeypatch.setattr(reader._FramePool, "take", counting_take)
    api.restore(str(tmp_path / "s.vms"), str(tmp_path / "out.raw"), jobs=jobs)
    assert (tmp_path / "out.raw").read_bytes() == data
    assert len(made) >= 16 and sum(made) <= max(1, jobs - 1) + 3


def test_a_decoder_thread_allocates_its_input_buffer_once(tmp_path, monkeypatch):
    # Frames that compress worse and worse: a buffer grown frame by frame would be
    # allocated (and zeroed) again at each larger one.
    from vmsnap.format import reader

    import numpy as np

    rng = np.random.default_rng(3)
    pages = np.zeros((5, 512, 4096), np.uint8)  # frame k: 2 MiB of pages, each (k + 3) / 7 random bytes
    for k in range(5):
        pages[k, :, :4096 * (k + 3) // 7] = rng.integers(0, 256, (512, 4096 * (k + 3) // 7), dtype=np.uint8)
    data = pages.tobytes()
    (tmp_path / "in.raw").write_bytes(data)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"), frame_size=512 * 4096)
    with Snapshot(str(tmp_path / "s.vms")) as snap:
        sizes = [int(s) for s in snap.frames["size"]]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes) == 5  # each frame larger than the last
    made = []

    def counting_bytearray(n):
        made.append((threading.current_thread().name, n))
        return bytearray(n)

    monkeypatch.setattr(reader, "bytearray", counting_bytearray, raising=False)
    api.restore(str(tmp_path / "s.vms"), str(tmp_path / "out.raw"), jobs=2)  # one decoder thread
    assert (tmp_path / "out.raw").read_bytes() == data
    # 1 MiB is the least it takes; other reads make small ones. The main thread decodes a
    # frame itself when the decoder has not started it yet, in a buffer of its own.
    frame_buffers = [(name, n) for name, n in made if n >= 1 << 20]
    threads = [name for name, _ in frame_buffers]
    assert "vmsnap-decode_0" in threads and len(threads) == len(set(threads)) <= 2
    assert all(n >= max(sizes) > 1 << 20 for _, n in frame_buffers)


@pytest.mark.parametrize("offset", [0, 4096 + 100])
def test_cat_to_a_file_leaves_long_zero_runs_as_holes_as_restore_does(tmp_path, offset):
    data = build_image([("random", 1)] * 2 + [("zero",)] * 1024 + [("random", 2)] * 2)  # 4 MiB of zeros inside
    (tmp_path / "in.raw").write_bytes(data)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    out = tmp_path / "part.bin"
    api.cat(str(tmp_path / "s.vms"), offset, len(data) - offset - 1000, output=str(out))
    assert out.read_bytes() == data[offset:len(data) - 1000]
    assert os.stat(out).st_blocks * 512 <= len(data) - (4 << 20) + (64 << 10)  # the zero run is not on disk


def test_cat_to_a_pipe_gets_every_byte(tmp_path):
    data = build_image([("random", 1)] + [("zero",)] * 300 + [("fill", 5), ("random", 2)], tail=b"end")
    (tmp_path / "in.raw").write_bytes(data)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    done = subprocess.run([sys.executable, "-m", "vmsnap", "cat", str(tmp_path / "s.vms"), "--offset", "10",
                           "--length", str(len(data) - 10)], capture_output=True)
    assert done.returncode == 0 and done.stdout == data[10:], done.stderr


def test_an_abandoned_writer_writes_none_of_the_buffers_still_queued(tmp_path, small_buffers, monkeypatch):
    import threading

    written, started, release = [], threading.Event(), threading.Event()
    real = output.ImageWriter._put

    def slow_first(self, data, offset):
        written.append(offset)
        if len(written) == 1:
            started.set()
            release.wait(5)
        real(self, data, offset)

    monkeypatch.setattr(output.ImageWriter, "_put", slow_first)
    with open(tmp_path / "out.raw", "wb") as fh:
        w = output.ImageWriter(fh, positioned=True)
        w.write(0, b"\xab" * (3 * output.BUFFER_BYTES))  # three buffers: one in hand, two queued
        assert started.wait(5)
        threading.Timer(0.2, release.set).start()
        w.abandon()  # the writer thread finishes the buffer in hand, and only that one
    assert written == [0]


def test_close_turns_o_direct_off_again(tmp_path):
    import fcntl

    with open(tmp_path / "out.raw", "wb") as fh:
        w = output.ImageWriter(fh, positioned=True)
        direct = bool(fcntl.fcntl(fh.fileno(), fcntl.F_GETFL) & os.O_DIRECT)
        assert direct == w._direct  # on wherever the file system takes it
        w.write(0, b"\x01" * 10_000)
        w.close(10_000)
        assert not fcntl.fcntl(fh.fileno(), fcntl.F_GETFL) & os.O_DIRECT  # the caller's file object as it was
        fh.seek(10_000)
        fh.write(b"tail")  # an unaligned buffered write, as after any close()
    assert (tmp_path / "out.raw").read_bytes() == b"\x01" * 10_000 + b"tail"


@pytest.mark.parametrize("raised", [OverflowError("cannot fit"), ValueError("cannot fit"), RuntimeError("odd")])
def test_a_writer_thread_that_fails_otherwise_than_oserror_does_not_hang_the_writes(tmp_path, monkeypatch, raised):
    # An OverflowError (an offset past 2**63, from cat) ended the writer thread holding its
    # buffers: the next write waited for a free one forever.
    from conftest import within

    def fail(fd, data, offset):
        raise raised

    monkeypatch.setattr(output, "pwrite_all", fail)

    def write_all():
        with open(tmp_path / "out", "wb") as fh:
            writer = output.ImageWriter(fh, positioned=True)
            try:
                for i in range(4 * output.BUFFERS):
                    writer.write(i * output.BUFFER_BYTES, bytes(output.BUFFER_BYTES))
                writer.close(4 * output.BUFFERS * output.BUFFER_BYTES)
            except BaseException:
                writer.abandon()  # as its callers do: the thread ends
                raise

    with pytest.raises(OSError if isinstance(raised, OverflowError) else type(raised)) as caught:
        within(30, write_all)
    if isinstance(caught.value, OSError):
        assert caught.value.errno == errno.EFBIG
    assert not [t for t in threading.enumerate() if t.name == "vmsnap-writer"]
