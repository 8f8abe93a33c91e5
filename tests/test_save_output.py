"""Save's output path: a new regular file is written by a writer thread with O_DIRECT;
anything else (a pipe, an in-memory buffer, a file that already holds bytes) gets plain
writes. Both give the same bytes, and a full disk is an OutputError either way."""

import errno
import io
import os
import subprocess
import sys
import threading

import pytest

from vmsnap import api, output
from vmsnap.errors import OutputError
from vmsnap.format.writer import SnapshotWriter

from conftest import build_image, pwrites_direct

IMAGE = build_image([("random", i) for i in range(40)] + [("zero",)] * 6 + [("random", 3)] * 3, tail=b"tail")


@pytest.fixture
def small_buffers(monkeypatch):
    monkeypatch.setattr(output, "BUFFER_BYTES", 16384)  # many buffers for a small snapshot


def save_to(out) -> dict:
    writer = SnapshotWriter(out, frame_size=8 * 4096)
    writer.add_region("ram", 0, [IMAGE])
    return writer.close()


def test_a_new_file_and_a_memory_buffer_get_the_same_bytes(tmp_path, small_buffers):
    buf = io.BytesIO()
    save_to(buf)
    with open(tmp_path / "s.vms", "wb") as fh:
        summary = save_to(fh)
    assert (tmp_path / "s.vms").read_bytes() == buf.getvalue()
    assert summary["bytes_out"] == len(buf.getvalue())


def test_save_writes_a_new_file_with_o_direct_where_the_file_system_allows(tmp_path, monkeypatch):
    (tmp_path / "in.raw").write_bytes(IMAGE)
    flags = pwrites_direct(tmp_path, monkeypatch, lambda: api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms")))
    assert flags and all(flags)
    api.restore(str(tmp_path / "s.vms"), str(tmp_path / "out.raw"))
    assert (tmp_path / "out.raw").read_bytes() == IMAGE


def test_a_file_that_holds_bytes_keeps_them_and_gets_plain_writes(tmp_path, monkeypatch):
    monkeypatch.setattr("vmsnap.format.writer.ImageWriter", None)  # would fail if it were used
    with open(tmp_path / "s.vms", "wb") as fh:
        fh.write(b"prefix")
        summary = save_to(fh)
    blob = (tmp_path / "s.vms").read_bytes()
    buf = io.BytesIO()
    save_to(buf)
    assert blob == b"prefix" + buf.getvalue() and summary["bytes_out"] == len(buf.getvalue())


def test_save_to_a_pipe_streams(tmp_path):
    (tmp_path / "in.raw").write_bytes(IMAGE)
    p = subprocess.run([sys.executable, "-m", "vmsnap.cli", "save", str(tmp_path / "in.raw"), "-o", "-", "-q"],
                       stdout=subprocess.PIPE, check=True)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    assert p.stdout == (tmp_path / "s.vms").read_bytes()


@pytest.mark.parametrize("room", [0, 5000, 40000])
def test_a_full_disk_under_the_writer_thread_is_an_output_error_and_leaves_no_file(tmp_path, monkeypatch,
                                                                                   small_buffers, room):
    (tmp_path / "in.raw").write_bytes(IMAGE)
    left, real = {"bytes": room}, os.pwrite

    def pwrite(fd, data, offset):
        if len(data) > left["bytes"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        left["bytes"] -= len(data)
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(OutputError, match=f"^{tmp_path / 's.vms'}: no space left on device$"):  # names the file
        api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    assert sorted(os.listdir(tmp_path)) == ["in.raw"]
    assert not [t for t in threading.enumerate() if t.name == "vmsnap-writer"]
