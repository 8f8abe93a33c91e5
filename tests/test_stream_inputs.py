"""Inputs that can be read only once (a FIFO, a character device): the bytes read to
detect the format are not lost, and the input is opened once."""

import json
import os
import threading

import pytest

from vmsnap import api
from vmsnap.errors import InputError
from vmsnap.sources import open_source

from conftest import build_image, within
from source_builders import simple_stream

PS = 4096


def fifo_fed_with(tmp_path, data: bytes, name="in.fifo"):
    """A FIFO whose writer (a thread) writes `data` once, in 64 KiB pieces, then closes it."""
    path = tmp_path / name
    os.mkfifo(path)

    def feed():
        try:
            with open(path, "wb") as fh:
                for i in range(0, len(data), 65536):
                    fh.write(data[i:i + 65536])
        except BrokenPipeError:  # the reader stopped early (a refused input)
            pass

    threading.Thread(target=feed, daemon=True).start()
    return str(path)


def regions_of(source):
    with source:
        return [(r.name, r.base, b"".join(bytes(c) for c in chunks)) for r, chunks in source.regions()]


def test_a_raw_image_from_a_fifo_saves_whole(tmp_path):
    image = build_image([("random", i) for i in range(300)] + [("zero",)] * 20, tail=b"tail")
    summary = within(20, api.save, fifo_fed_with(tmp_path, image), str(tmp_path / "s.vms"))
    assert summary["bytes_in"] == len(image)
    api.restore(str(tmp_path / "s.vms"), str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == image


def test_a_migration_stream_from_a_fifo_is_detected_and_read_like_the_file(tmp_path):
    blocks = [("pc.ram", 4 * PS), ("pc.bios", 2 * PS)]
    pages = [("page", "pc.ram", 0, os.urandom(PS)), ("zero", "pc.ram", PS, 0),
             ("page", "pc.ram", 3 * PS, os.urandom(PS)), ("page", "pc.bios", PS, os.urandom(PS))]
    stream = simple_stream(blocks, pages)[0].bytes()
    (tmp_path / "s.mig").write_bytes(stream)
    from_file = open_source(str(tmp_path / "s.mig"))
    from_fifo = within(20, open_source, fifo_fed_with(tmp_path, stream))
    assert from_fifo.format_name == from_file.format_name == "qemu"
    assert within(20, regions_of, from_fifo) == regions_of(from_file)


@pytest.mark.parametrize("fmt", ["auto", "raw"])
def test_a_fifo_is_opened_once(tmp_path, monkeypatch, fmt):
    import builtins

    path = fifo_fed_with(tmp_path, b"x" * 10000)
    opened, real = [], builtins.open

    def spy(file, *a, **kw):
        if str(file) == path:
            opened.append(file)
        return real(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy)
    assert within(20, lambda: regions_of(open_source(path, fmt))) == [("ram", 0, b"x" * 10000)]
    assert len(opened) == 1


def test_a_snapshot_from_a_fifo_is_one_clear_error(tmp_path):
    (tmp_path / "in.raw").write_bytes(build_image([("random", 1)]))
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    path = fifo_fed_with(tmp_path, (tmp_path / "s.vms").read_bytes())
    with pytest.raises(InputError, match="must be a regular file"):
        within(20, open_source, path)


def test_sharing_reads_a_fifo_once_and_refuses_one_given_twice(tmp_path):
    from vmsnap.analyze import sharing
    from vmsnap.errors import UsageError

    image = build_image([("random", i) for i in range(40)] + [("zero",)] * 4)
    (tmp_path / "b.raw").write_bytes(image)
    path = fifo_fed_with(tmp_path, image)
    result = within(60, lambda: sharing.analyze([path, str(tmp_path / "b.raw")], jobs=1))
    assert [d["pages"] for d in result["dumps"]] == [44, 44]
    assert result["fleet"]["cross_vm"]["contents"] == 40  # the FIFO's pages were all read, once
    with pytest.raises(UsageError, match="can be read only once"):
        sharing.analyze([path, path])


@pytest.mark.parametrize("how", ["pipe", "redirected file"])
def test_stdin_is_detected_like_a_fifo(tmp_path, how):
    # Stdin was read as raw whatever it held: a snapshot piped to `analyze sharing -` was
    # analysed as memory, an ELF core saved as one region of ELF bytes.
    import subprocess
    import sys

    image = build_image([("random", i) for i in range(30)] + [("zero",)] * 5, tail=b"tail")
    (tmp_path / "in.raw").write_bytes(image)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    api.restore(str(tmp_path / "s.vms"), str(tmp_path / "core.elf"), format="elf")

    def vmsnap(args, stdin_file):
        feed = f"cat {stdin_file} |" if how == "pipe" else ""
        redirect = "" if how == "pipe" else f"< {stdin_file}"
        return subprocess.run(f"{feed} {sys.executable} -m vmsnap.cli {args} {redirect}", shell=True,
                              cwd=tmp_path, capture_output=True, text=True)

    p = vmsnap("save - -o from-elf.vms -q", "core.elf")
    assert p.returncode == 0, p.stderr
    with api.open_snapshot(str(tmp_path / "from-elf.vms")) as snap:
        assert snap.source.startswith("elf:") and snap.read(0, len(image)) == image
    p = vmsnap("analyze sharing --json -", "s.vms")
    if how == "pipe":  # its index is at its end
        assert (p.returncode, p.stderr) == (3, "vmsnap: error: standard input is not a regular file, and a "
                                               "snapshot keeps its index at its end: name the file, or redirect "
                                               "stdin from it with <\n")
    else:  # a file redirected in is read in place, as the file
        named = subprocess.run([sys.executable, "-m", "vmsnap.cli", "analyze", "sharing", "--json", "s.vms"],
                               cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 0 and json.loads(p.stdout)["fleet"] == json.loads(named.stdout)["fleet"]
        assert json.loads(p.stdout)["dumps"][0]["pages"] == json.loads(named.stdout)["dumps"][0]["pages"] == 36


def test_a_snapshot_redirected_to_stdin_is_read_in_place(tmp_path):
    # It was refused like a pipe; a file redirected in can be read where it is.
    import subprocess
    import sys

    image = build_image([("random", i) for i in range(30)] + [("zero",)] * 5, tail=b"tail")
    (tmp_path / "in.raw").write_bytes(image)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))

    def vmsnap(*args, stdin=None):
        with open(tmp_path / "s.vms", "rb") if stdin else open(os.devnull, "rb") as fh:
            return subprocess.run([sys.executable, "-m", "vmsnap.cli", *args], stdin=fh, cwd=tmp_path,
                                  capture_output=True)

    for command in (["info", "--json"], ["verify", "--json"], ["cat", "--offset", "4090", "--length", "9"]):
        by_name, redirected = vmsnap(*command, "s.vms"), vmsnap(*command, "-", stdin=True)
        assert redirected.returncode == 0, redirected.stderr
        out = redirected.stdout.replace(b'"file": "-"', b'"file": "s.vms"')
        assert out == by_name.stdout and out, command
    assert vmsnap("restore", "-", "-o", "out.raw", "-q", stdin=True).returncode == 0
    assert (tmp_path / "out.raw").read_bytes() == image
    # Not over itself: the output would replace the snapshot being read.
    p = vmsnap("restore", "-", "-o", "s.vms", stdin=True)
    assert p.returncode == 2 and b"is the standard input" in p.stderr


def test_a_block_device_on_stdin_is_read_from_where_its_head_was_sniffed(tmp_path, monkeypatch):
    # Sizing a block device sought back to 0 under the sniffed head: the image restarted at
    # byte 64 (or 512) and its end was lost, exit 0. A regular file stands in for the device.
    import stat

    from vmsnap.sources import raw
    from vmsnap.streams import sniff

    image = os.urandom(20 * PS + 100)
    (tmp_path / "dev").write_bytes(image)
    real_fstat = os.fstat

    def as_block_device(fd):
        st = real_fstat(fd)
        return os.stat_result((stat.S_IFBLK | 0o600,) + tuple(st)[1:])

    monkeypatch.setattr(raw.os, "fstat", as_block_device)
    with open(tmp_path / "dev", "rb") as fh:
        fh.seek(PS)  # stdin need not start at the device's first byte
        head, sniffed = sniff(fh, 64)
        source = raw.RawSource("-", fh=sniffed)
        assert source.size_hint == len(image) - PS
        assert regions_of(source) == [("ram", 0, image[PS:])]


def _vmsnap_on_stdin(tmp_path, path, at, *args):
    """`vmsnap ARGS` with stdin redirected from `path`, `at` bytes of it already read."""
    import subprocess
    import sys

    with open(path, "rb") as fh:
        fh.seek(at)
        return subprocess.run([sys.executable, "-m", "vmsnap.cli", *args], stdin=fh, cwd=tmp_path,
                              capture_output=True, text=True)


def _image(snap):
    with api.open_snapshot(str(snap)) as s:
        return {r.name: (r.base, s.read(0, r.size, r.name)) for r in s.regions}


def test_stdin_is_read_from_where_it_stands_even_by_readers_that_seek(tmp_path):
    # Stdin redirected from a file was handed to the ELF and LiME readers as a seekable file:
    # they sought to offsets counted from the file's start, not from where stdin stood. The
    # second of two LiME dumps was saved as the first, with exit 0.
    from source_builders import build_elf, build_lime

    a, _ = build_lime([(0, b"A" * 8 * 4096), (1 << 20, b"a" * 4 * 4096)])
    b, _ = build_lime([(0, b"B" * 8 * 4096), (1 << 20, b"b" * 4 * 4096)])
    (tmp_path / "ab.lime").write_bytes(a + b)
    (tmp_path / "b.lime").write_bytes(b)
    core, _, _ = build_elf([(0, os.urandom(8 * 4096), None), (1 << 20, os.urandom(4 * 4096), None)])
    (tmp_path / "x.elf").write_bytes(b"#a line before it\n" + core)
    (tmp_path / "core.elf").write_bytes(core)
    for path, at, alone in (("ab.lime", len(a), "b.lime"), ("x.elf", 18, "core.elf"), ("core.elf", 0, "core.elf")):
        p = _vmsnap_on_stdin(tmp_path, tmp_path / path, at, "save", "-", "-o", "in.vms", "-q")
        assert p.returncode == 0, p.stderr
        api.save(str(tmp_path / alone), str(tmp_path / "named.vms"))
        assert _image(tmp_path / "in.vms") == _image(tmp_path / "named.vms"), path


def test_a_snapshot_on_stdin_must_be_the_whole_file_and_readable(tmp_path):
    image = build_image([("random", i) for i in range(8)])
    (tmp_path / "in.raw").write_bytes(image)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    (tmp_path / "two.vms").write_bytes((tmp_path / "s.vms").read_bytes() * 2)
    # The second snapshot of two: the index at the file's end would be read as the first's.
    p = _vmsnap_on_stdin(tmp_path, tmp_path / "two.vms", (tmp_path / "s.vms").stat().st_size, "info", "-")
    assert (p.returncode, p.stderr) == (3, "vmsnap: error: standard input is not at the start of its file, "
                                           "where a snapshot must begin: name the file\n")
    p = _vmsnap_on_stdin(tmp_path, tmp_path / "two.vms", 0, "verify", "-")
    assert p.returncode == 90 and "trailer" in p.stderr  # read as the file: its end is not the first one's
    # Stdin opened for writing only (`0>>s.vms`): a traceback (EBADF) before.
    import subprocess
    import sys

    with open(tmp_path / "s.vms", "ab") as fh:
        p = subprocess.run([sys.executable, "-m", "vmsnap.cli", "info", "-"], stdin=fh, capture_output=True, text=True)
    assert (p.returncode, p.stderr) == (3, "vmsnap: error: standard input is not open for reading\n")
    p = _vmsnap_on_stdin(tmp_path, tmp_path / "s.vms", 0, "save", "-", "-o", "again.vms", "-q")
    assert p.returncode == 0, p.stderr
    with api.open_snapshot(str(tmp_path / "again.vms")) as snap:
        assert snap.source == "vms:stdin" and snap.read(0, len(image)) == image


def test_the_api_leaves_stdin_open_and_refuses_a_text_stdin(tmp_path, monkeypatch):
    # save('-') closed sys.stdin.buffer (a second call: "read of closed file"); a text
    # stream in sys.stdin was a TypeError from deep inside.
    import io
    import subprocess
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO("not bytes"))
    with pytest.raises(InputError, match="text stream"):
        api.save("-", str(tmp_path / "t.vms"))
    image = build_image([("random", 1), ("zero",)])
    script = ("import sys, vmsnap; vmsnap.save('-', 'a.vms'); print(sys.stdin.buffer.closed); "
              "print(vmsnap.save('-', 'b.vms')['bytes_in'])")
    for how in ("pipe", "file"):
        (tmp_path / "in.raw").write_bytes(image)
        with open(tmp_path / "in.raw", "rb") as fh:
            p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                               **({"input": image.decode("latin-1")} if how == "pipe" else {"stdin": fh}))
        assert p.returncode == 0, p.stderr
        closed, second = p.stdout.split()
        assert closed == "False", how
        assert int(second) == 0  # stdin was read to its end by the first: an empty image, not an error


def test_a_truncated_core_on_a_partly_read_stdin_is_measured_from_where_stdin_stood(tmp_path):
    # Its size was the whole file's: "needs bytes up to offset 32952, the file has 32870",
    # when 18 bytes of the file were before the core.
    from source_builders import build_elf

    core = build_elf([(0, os.urandom(8 * 4096), None)])[0]
    (tmp_path / "pre.elf").write_bytes(b"#a line before it\n" + core[:-100])
    p = _vmsnap_on_stdin(tmp_path, tmp_path / "pre.elf", 18, "save", "-", "-o", "t.vms")
    assert p.returncode == 3 and p.stderr.count("\n") == 1, p.stderr
    assert "needs 100 more bytes" in p.stderr and "the file has" not in p.stderr
    (tmp_path / "cut.elf").write_bytes(core[:-100])
    p = _vmsnap_on_stdin(tmp_path, tmp_path / "cut.elf", 0, "save", "-", "-o", "t.vms")
    assert p.returncode == 3 and f"the file has {len(core) - 100}" in p.stderr, p.stderr  # read as the file


def test_stdin_past_the_end_of_its_file_is_an_empty_image_of_size_zero(tmp_path):
    # Its size was negative (the file's size less a position beyond it).
    import subprocess
    import sys

    (tmp_path / "in.raw").write_bytes(bytes(4096))
    script = "from vmsnap.sources import open_source; s = open_source('-'); print(s.size_hint)"
    with open(tmp_path / "in.raw", "rb") as fh:
        fh.seek(10000)
        p = subprocess.run([sys.executable, "-c", script], stdin=fh, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "0", p.stderr


TERMINAL = "vmsnap: error: standard input is a terminal: redirect a file into it (<) or pipe one to it\n"


@pytest.mark.parametrize("args", [("save", "-", "-o", "out.vms"), ("info", "-"), ("restore", "-", "-o", "out.raw"),
                                  ("analyze", "sharing", "-"), ("analyze", "mrc", "-")])
def test_a_terminal_on_stdin_is_refused_not_read(tmp_path, args):
    # `vmsnap save -` typed at a prompt waited for bytes, and took ^D two or three times to end.
    import subprocess
    import sys

    main, terminal = os.openpty()
    os.write(main, b"typed\n\x04\x04\x04")  # a line and ^D: a read of the terminal would end, not wait
    try:
        p = subprocess.run([sys.executable, "-m", "vmsnap.cli", *args], stdin=terminal, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    finally:
        os.close(terminal)
        os.close(main)
    assert (p.returncode, p.stderr, p.stdout) == (3, TERMINAL, "")
    assert os.listdir(tmp_path) == []


def test_the_api_refuses_a_terminal_in_sys_stdin(tmp_path, monkeypatch):
    import sys

    main, terminal = os.openpty()
    with open(terminal, "rb", buffering=0) as tty, open(terminal, "r", closefd=False) as text_tty:
        try:
            for stdin in (tty, text_tty):  # a binary or a text file object on the terminal
                os.write(main, b"typed\n\x04\x04\x04")  # a line and ^D: a read of the terminal would end, not wait
                monkeypatch.setattr(sys, "stdin", stdin)
                with pytest.raises(InputError, match="^standard input is a terminal"):
                    api.save("-", str(tmp_path / "t.vms"))
        finally:
            os.close(main)
    assert os.listdir(tmp_path) == []
