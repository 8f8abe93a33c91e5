import os
import stat
import sys
import threading

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "fixtures"))


def build_image(spec, page_size=4096, tail=b""):
    """Bytes of an image from a list of page specs whose kinds are known by construction.

    ("zero",) | ("fill", byte) | ("unit", bytes) | ("sparse", {word: value}) |
    ("random", seed) | ("copy", earlier page index) |
    ("shift", earlier page index, byte offset): the bytes at that offset of the
    earlier page followed by the page after it (a copy off a page boundary)
    """
    pages = []
    for item in spec:
        kind = item[0]
        if kind == "zero":
            page = bytes(page_size)
        elif kind == "fill":
            page = bytes([item[1]]) * page_size
        elif kind == "unit":
            unit = item[1]
            page = (unit * (page_size // len(unit) + 1))[:page_size]
        elif kind == "sparse":
            words = np.zeros(page_size // 8, dtype="<u8")
            for w, v in item[1].items():
                words[w] = v
            page = words.tobytes()
        elif kind == "random":
            page = np.random.default_rng(item[1]).integers(0, 256, page_size, dtype=np.uint8).tobytes()
        elif kind == "copy":
            page = pages[item[1]]
        elif kind == "shift":
            src, offset = item[1], item[2]
            page = (pages[src] + pages[min(src + 1, len(pages) - 1)])[offset:offset + page_size]
        else:
            raise ValueError(kind)
        pages.append(page)
    return b"".join(pages) + tail


def write_regions(path, regions) -> str:
    """A snapshot at `path` of regions given as (name, base, bytes), in that order."""
    from vmsnap.format.writer import SnapshotWriter

    with open(path, "wb") as out:
        w = SnapshotWriter(out, source="test")
        for name, base, data in regions:
            w.add_region(name, base, [data])
        w.close()
    return str(path)


@pytest.fixture
def small_batches(monkeypatch):
    """Save in batches of 16 KiB: a slice is found in data stored by an earlier batch,
    so small test images need many batches to have any."""
    from vmsnap.format import writer

    monkeypatch.setattr(writer, "BATCH_BYTES", 16384)


@pytest.fixture
def write_file(tmp_path):
    def write(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    return write


def pwrites_direct(directory, monkeypatch, action) -> list[bool]:
    """Whether each os.pwrite during action() had O_DIRECT on; skips the test where the
    file system of `directory` refuses O_DIRECT."""
    import fcntl

    from vmsnap import output

    with open(os.path.join(directory, "probe"), "wb") as fh:
        if not output._set_direct(fh.fileno(), True):
            pytest.skip("no O_DIRECT on this file system")
    os.unlink(os.path.join(directory, "probe"))
    flags, real = [], os.pwrite

    def spy(fd, data, offset):
        flags.append(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT))
        return real(fd, data, offset)

    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", spy)
        action()
    return flags


def within(seconds, fn, *args):
    """fn(*args) on a thread; a reader that reopened the FIFO would wait forever for a writer."""
    out = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # handed to the test's thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still reading after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def char_device(tmp_path, name, minor):
    """A character device node like /dev/null (1, 3) or /dev/full (1, 7), in tmp_path.

    Without CAP_MKNOD, a symbolic link to the real node (writing to /dev/null or
    /dev/full changes nothing): the tests that fill a temporary file through it
    must run on any CI, root or not."""
    path = tmp_path / name
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except PermissionError:
        real = f"/dev/{name}"
        if not os.path.exists(real) or os.stat(real).st_rdev != os.makedev(1, minor):
            pytest.skip(f"no device node (1, {minor}) can be made or found here")
        os.symlink(real, path)
    return path


def resign(blob, *, page_size=None, edit=None, raw_size=None, content_size=True):
    """A snapshot's bytes with its header and index rebuilt (the index's fields changed by
    edit(index)) and every digest made to match again: a consistent file that lies, as a
    damaged writer or a hostile host could make one."""
    import zstandard

    from vmsnap.format import structs as S

    head = S.Header.parse(blob)
    header_end = head.body.length + S.DIGEST_SIZE
    trailer = S.Trailer.parse(blob[-S.TRAILER_SIZE:])
    value = head.body.value
    body_struct = S.IndexBodyWithAttachments if value.flags & S.FLAG_ATTACHMENTS else S.IndexBody
    index = body_struct.parse(zstandard.ZstdDecompressor().decompress(
        blob[trailer.index_offset:trailer.index_offset + trailer.index_size], max_output_size=trailer.index_raw_size))
    if edit:
        edit(index)
    header = S.Header.build({"body": {"value": {"version": value.version, "flags": value.flags,
                                                "page_size": page_size or value.page_size, "source": value.source}}})
    assert len(header) == header_end  # the frames stay where they are
    body = body_struct.build(index)
    stored = zstandard.ZstdCompressor(write_content_size=content_size).compress(body)
    return header + blob[header_end:trailer.index_offset] + stored + S.Trailer.build(
        {"index_offset": trailer.index_offset, "index_size": len(stored),
         "index_raw_size": len(body) if raw_size is None else raw_size, "index_digest": S.digest(stored)})
