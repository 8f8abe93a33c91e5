"""The command line: exit codes, one-line errors, JSON output, help for every command."""

import json
import re
import os
import subprocess
import sys

import numpy as np
import click
import pytest
from click.testing import CliRunner

from vmsnap import api
from vmsnap.cli import main
from vmsnap.errors import FormatError, InputError, IntegrityError, OutputError, UnsupportedVersionError

from conftest import build_image



def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def image(tmp_path):
    data = build_image([("random", 1), ("zero",), ("fill", 5), ("copy", 0)], tail=b"abc")
    path = tmp_path / "in.raw"
    path.write_bytes(data)
    return data, path


def _leaf_commands(group=main, path=()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _leaf_commands(cmd, path + (name,))
        else:
            yield path + (name,)


MAN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "man")


@pytest.mark.parametrize("cmd", list(_leaf_commands()), ids="-".join)
def test_every_command_has_help_and_a_man_page(cmd):
    result = run(*cmd, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output
    page = f"vmsnap-{'-'.join(cmd)}.1"
    with open(os.path.join(MAN, page)) as fh:  # a command without its own page fails here
        text = fh.read()
    for name in set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", result.output)) - {"--help"}:
        assert name.replace("-", r"\-") in text, f"{name} missing from {page}"
    with open(os.path.join(MAN, "vmsnap.1")) as fh:
        assert f".BR {page[:-2].replace('-', chr(92) + '-')} (1)" in fh.read(), f"{page} not listed in vmsnap.1"


@pytest.mark.parametrize("module", ["vmsnap", "vmsnap.cli"])
def test_every_command_runs_as_a_module(module):
    # `python -m vmsnap.cli` once ran main() before the qemu group was defined: "No such command 'qemu'".
    listed = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True).stdout
    for name in main.commands:
        assert re.search(rf"^\s+{re.escape(name)}\s", listed, re.M), f"{name} missing from python -m {module} --help"
    done = subprocess.run([sys.executable, "-m", module, "qemu", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "device-state" in done.stdout, done.stderr


def test_man_pages_render_without_warnings():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "man")
    pages = sorted(os.listdir(root))
    assert len(pages) > 10
    for page in pages:
        with open(os.path.join(root, page)) as fh:
            text = fh.read()
        if ".TS" in text:  # man(1) runs tbl only for pages that ask for it on their first line
            assert text.startswith("'\\\" t\n"), f"{page} has tables but no '\\\" t line"
        # -t: tables too (a table wider than 78 columns is a warning), at man's usual width
        done = subprocess.run(["groff", "-t", "-man", "-Tutf8", "-ww", "-z", "-rLL=78n", os.path.join(root, page)],
                              capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
        assert done.returncode == 0 and done.stderr == "", f"{page}: {done.stderr}"


def _json_section(page: str) -> str:
    """The man page's text from its --json entry to the next section, font escapes removed."""
    with open(os.path.join(MAN, page)) as fh:
        text = fh.read()
    text = re.sub(r"\\f[BIRP]", "", text[text.index(".B \\-\\-json"):]).replace("\\-", "-")
    return text[:text.index("\n.SH")]


def _keys(value, prefix=""):
    """Every key of a JSON object and of the objects in it (nested keys as parent.key)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield prefix + key
            yield from _keys(inner, prefix + key + ".")
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        yield from _keys(value[0], prefix)


def test_every_json_field_is_in_the_man_page(tmp_path, image):
    data, raw = image
    snap = tmp_path / "s.vms"
    printed = {"save": run("save", str(raw), "-o", str(snap), "--json").output,
               "info": run("info", str(snap), "--json").output,
               "verify": run("verify", str(snap), "--json").output,
               "restore": run("restore", str(snap), "-o", str(tmp_path / "r"), "--json").output}
    for cmd, output in printed.items():
        section = _json_section(f"vmsnap-{cmd}.1")
        for key in _keys(json.loads(output)):
            name = key.rsplit(".", 1)[-1]
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", section), \
                f"{cmd} --json prints {key}, which vmsnap-{cmd}.1 does not name"


def test_save_info_verify_restore_cat(tmp_path, image):
    data, raw = image
    snap = tmp_path / "s.vms"
    result = run("save", str(raw), "-o", str(snap), "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["bytes_in"] == len(data)
    info = json.loads(run("info", str(snap), "--json").output)
    assert info["pages"] == {"zero": 1, "pattern": 1, "sparse": 1, "data": 1, "ref": 1, "slice": 0}  # the tail is sparse
    assert info["compression_ratio"] == pytest.approx(info["image_bytes"] / info["snapshot_bytes"])
    assert "pages_sharing" in run("info", str(snap)).output
    assert run("verify", str(snap)).exit_code == 0
    out = tmp_path / "out.raw"
    assert run("restore", str(snap), "-o", str(out), "-q").exit_code == 0
    assert out.read_bytes() == data
    result = run("cat", str(snap), "--offset", "0x1000", "--length", "4K")
    assert result.stdout_bytes == data[4096:8192]
    result = run("cat", str(snap), "--offset", "0x1B", "--length", "0xAB")  # hex digits B, not "bytes"
    assert result.stdout_bytes == data[0x1B:0x1B + 0xAB]


@pytest.mark.parametrize("length", [4000, 4047, 4096, 65535])
def test_a_long_description_reads_back(tmp_path, image, length):
    # The reader once read only the header's first 4 KiB: a save with a longer
    # description exited 0 and left a snapshot nothing could read.
    data, raw = image
    snap = tmp_path / "s.vms"
    text = "d\u00e9" * (length // 3) + "d" * (length % 3)  # multi-byte characters across the 4 KiB line
    assert run("save", str(raw), "-o", str(snap), "-q", "--description", text).exit_code == 0
    assert json.loads(run("info", str(snap), "--json").output)["source"] == text
    assert run("verify", str(snap), "-q").exit_code == 0


@pytest.mark.parametrize("text,message", [("a" * 65536, "more than 65535"), ("\udcff", "not valid UTF-8")])
def test_a_description_the_format_cannot_hold_is_refused(tmp_path, image, text, message):
    _, raw = image
    result = run("save", str(raw), "-o", str(tmp_path / "s.vms"), "--description", text)
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1
    assert os.listdir(tmp_path) == ["in.raw"]


def test_python_dash_m_names_the_command_as_typed():
    p = subprocess.run([sys.executable, "-m", "vmsnap", "save"], capture_output=True, text=True)
    assert (p.returncode, p.stderr) == (
        2, "vmsnap: error: save: Missing argument 'INPUT'. (see 'python -m vmsnap save --help')\n")


def test_ctrl_c_while_the_cli_loads_is_one_line():
    # The console script's entry point catches a Ctrl-C during `from .cli import main`.
    code = ("import builtins\n"
            "real = builtins.__import__\n"
            "def interrupted(name, *args, **kw):\n"
            "    if name == 'cli':\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *args, **kw)\n"
            "builtins.__import__ = interrupted\n"
            "from vmsnap.entry import run\n"
            "run()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (p.returncode, p.stderr) == (130, "vmsnap: error: interrupted\n")


def test_ctrl_c_while_the_options_are_parsed_is_one_line(monkeypatch):
    def interrupted(self, ctx, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(click.Group, "parse_args", interrupted)
    result = run("info", "x.vms")
    assert (result.exit_code, result.output) == (130, "vmsnap: error: interrupted\n")  # not click's "Aborted!", 1


def test_save_options_for_slices_and_long_matching(tmp_path, small_batches):
    data = build_image([("random", i) for i in range(4)] + [("shift", 1, 1024)] * 2)
    raw = tmp_path / "in.raw"
    raw.write_bytes(data)
    # the repeated copy: a second slice, or a reference to the copy stored as data
    for opts, slices, refs in ((["--long"], 2, 0), (["--slice-window", "0"], 0, 1)):
        snap = tmp_path / "s.vms"
        assert run("save", str(raw), "-o", str(snap), "-q", *opts).exit_code == 0
        info = json.loads(run("info", str(snap), "--json").output)
        assert info["pages"]["slice"] == slices and info["pages"]["ref"] == refs
        out = tmp_path / "out.raw"
        assert run("restore", str(snap), "-o", str(out), "-q").exit_code == 0
        assert out.read_bytes() == data
    bad = run("save", str(raw), "-o", str(tmp_path / "x.vms"), "--slice-window", "-1")
    assert bad.exit_code == 2 and "negative" in bad.output


@pytest.mark.parametrize("args,code,message", [
    (["info", "/nonexistent.vms"], InputError.exit_code, "no such file"),
    (["save", "/nonexistent.raw", "-o", "x.vms"], InputError.exit_code, "no such file"),
    (["save", "IN", "-o", "x.vms", "--page-size", "3000"], 2, "power of two"),
    (["save", "IN", "-o", "x.vms", "--page-size", "4Q"], 2, "not a size"),
    (["save", "IN", "-o", "x.vms", "--format", "nope"], 2, "unknown input format"),
    (["save", "IN", "-o", "x.vms", "--frame-size", "2K"], 2, "smaller than the page size"),
    (["save", "IN", "-o", "x.vms", "--frame-size", "2G"], 2, "larger than 1024 MiB"),
    (["info", "IN"], FormatError.exit_code, "not a vmsnap snapshot"),
    # click's own usage errors: one line too, not click's usage text
    (["save", "IN"], 2, "save: Missing option '-o'"),
    (["save", "IN", "-o", "x.vms", "--levle", "3"], 2, "save: No such option '--levle'"),
    (["restore", "IN", "-o", "x", "--format", "tar"], 2, "restore: Invalid value for '--format'"),
    (["analyze", "mrc"], 2, "analyze mrc: Missing argument 'TRACE'"),
    (["nosuchcommand"], 2, "No such command 'nosuchcommand'"),
    (["save", "IN", "-o"], 2, "save: Option '-o' requires an argument. (see '"),
    (["analyze", "mrc", "IN", "--page-size"], 2, "analyze mrc: Option '--page-size' requires an argument"),
    (["save", "IN", "-o", "x.vms", "--page-size", "010"], 2, "power of two from 512 to 16777216, got 10"),
    (["--nosuchoption"], 2, "No such option '--nosuchoption'"),
])
def test_errors_are_one_line_with_documented_codes(tmp_path, image, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    args = [str(image[1]) if a == "IN" else a for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert result.output.startswith("vmsnap: error: ") and result.output.count("\n") == 1, result.output


def _vmsnap(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vmsnap.cli", *args], capture_output=True, **kw)


@pytest.fixture
def wrongly_decoded(tmp_path, image, monkeypatch):
    """A good snapshot of `image` whose frames decode, after their digest passed, to bytes that
    are not the image's: what a bug in putting pages together looks like to the checks after it."""
    from vmsnap.format.reader import Snapshot

    snap = tmp_path / "s.vms"
    assert run("save", str(image[1]), "-o", str(snap)).exit_code == 0
    decode = Snapshot._decode_frame

    def decode_wrongly(self, k):
        frame = decode(self, k).copy()
        frame[0, 7] ^= 1
        return frame

    monkeypatch.setattr(Snapshot, "_decode_frame", decode_wrongly)
    return snap


def test_restored_bytes_that_fail_a_block_digest_exit_90_and_leave_no_output(tmp_path, wrongly_decoded):
    out = tmp_path / "out.raw"
    result = run("restore", str(wrongly_decoded), "-o", str(out))
    assert result.exit_code == IntegrityError.exit_code == 90
    assert "block at offset 0x0 failed its digest" in result.output and "Traceback" not in result.output
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.parametrize("output", ["file", "-"])
def test_a_wrong_block_after_good_ones_is_named_by_its_offset(tmp_path, monkeypatch, output):
    """Blocks 0-1 are zero and right; the first data page, and so block 2, comes out wrong."""
    from vmsnap.format.reader import Snapshot

    raw, snap = tmp_path / "in.raw", tmp_path / "s.vms"
    raw.write_bytes(bytes(5 << 19) + np.random.default_rng(3).bytes(1 << 20))
    assert run("save", str(raw), "-o", str(snap)).exit_code == 0
    decode = Snapshot._decode_frame
    monkeypatch.setattr(Snapshot, "_decode_frame", lambda self, k: np.bitwise_xor(decode(self, k), 1))
    result = run("restore", str(snap), "-o", str(tmp_path / "out.raw") if output == "file" else "-")
    assert result.exit_code == IntegrityError.exit_code
    assert "block at offset 0x200000 failed its digest" in result.output
    assert not (tmp_path / "out.raw").exists()


@pytest.mark.parametrize("output", ["file", "-"])
def test_cat_of_bytes_that_fail_a_block_digest_exits_90_and_writes_nothing(tmp_path, wrongly_decoded, output):
    """cat checks the blocks around its range, not only the frames: bytes put together wrongly
    never reach its output."""
    snap, out = wrongly_decoded, tmp_path / "out.bin"
    target = str(out) if output == "file" else "-"
    result = run("cat", str(snap), "--offset", "100", "--length", "10", "-o", target)
    assert result.exit_code == IntegrityError.exit_code == 90
    assert "block at offset 0x0 failed its digest" in result.output
    assert not out.exists() and result.stdout_bytes == b""
    with pytest.raises(IntegrityError):
        api.cat(str(snap), 100, 10)
    with api.open_snapshot(str(snap)) as s:  # a lookup checks the frames it reads, not the blocks around it
        assert len(s.read(100, 10)) == 10


def test_corrupt_and_newer_snapshots_exit_codes(tmp_path, image):
    data, raw = image
    snap = tmp_path / "s.vms"
    assert run("save", str(raw), "-o", str(snap)).exit_code == 0
    blob = bytearray(snap.read_bytes())
    bad = tmp_path / "bad.vms"
    blob[-40] ^= 1  # inside the trailer's index digest
    bad.write_bytes(bytes(blob))
    p = _vmsnap("verify", str(bad))
    assert p.returncode == IntegrityError.exit_code
    assert p.stderr.decode().count("\n") == 1 and b"Traceback" not in p.stderr
    blob = bytearray(snap.read_bytes())
    blob[8] = 9
    bad.write_bytes(bytes(blob))
    assert _vmsnap("info", str(bad)).returncode == UnsupportedVersionError.exit_code


def test_writing_to_a_full_device_is_an_output_error(image):
    _, raw = image
    with open("/dev/full", "wb") as full:
        p = subprocess.run([sys.executable, "-m", "vmsnap.cli", "save", str(raw), "-o", "-"],
                           stdout=full, stderr=subprocess.PIPE)
    assert (p.returncode, p.stderr) == (OutputError.exit_code, b"vmsnap: error: stdout: no space left on device\n")


@pytest.mark.parametrize("args", [["info"], ["info", "--json"], ["verify"]])
def test_a_report_that_cannot_be_written_is_an_output_error(tmp_path, image, args):
    # These printed a traceback and exited 1 when stdout was full.
    _, raw = image
    snap = tmp_path / "s.vms"
    api.save(str(raw), str(snap))
    with open("/dev/full", "wb") as full:
        p = subprocess.run([sys.executable, "-m", "vmsnap.cli", args[0], str(snap), *args[1:]], stdout=full,
                           stderr=subprocess.PIPE, text=True)
    assert (p.returncode, p.stderr) == (OutputError.exit_code, "vmsnap: error: stdout: no space left on device\n")

@pytest.mark.parametrize("args", [["--help"], ["--version"], ["save", "--help"], ["analyze", "-h"],
                                  ["analyze", "mrc", "--help"], ["qemu", "save", "-h"]])
def test_help_or_version_to_a_full_stdout_is_an_output_error(args):
    # click writes these while it parses the options: each was a traceback and exit 1.
    with open("/dev/full", "wb") as full:
        p = subprocess.run([sys.executable, "-m", "vmsnap.cli", *args], stdout=full, stderr=subprocess.PIPE, text=True)
    assert (p.returncode, p.stderr) == (OutputError.exit_code, "vmsnap: error: stdout: no space left on device\n")



def test_a_message_of_several_lines_is_printed_as_one(monkeypatch):
    # construct's errors hold newlines: a crafted index printed two lines.
    def malformed(path):
        raise FormatError(f"{path}: malformed index: Error in path (parsing) -> patterns\nstream read less")

    monkeypatch.setattr(api, "info", malformed)
    result = run("info", "x.vms")
    assert result.exit_code == FormatError.exit_code
    assert result.output == "vmsnap: error: x.vms: malformed index: Error in path (parsing) -> patterns stream read less\n"


@pytest.mark.parametrize("args,redirect,code,message", [
    (["save", "-", "-o", "x.vms"], "<&-", 3, "standard input is closed"),
    (["restore", "SNAP", "-o", "-"], ">&-", 6, "standard output is closed"),
    (["cat", "SNAP", "--offset", "0", "--length", "9"], ">&-", 6, "standard output is closed"),
    (["info", "SNAP"], ">&-", 6, "stdout: standard output is closed"),  # an AttributeError traceback once
    (["--help"], ">&-", 6, "stdout: standard output is closed"),  # exit 0, nothing said
    (["qemu", "save", "-h"], ">&-", 6, "stdout: standard output is closed"),
    (["nosuchcommand"], "2>&-", 2, None),  # no stderr to say it on: the code still tells
    (["info", "no-such.vms"], "2>/dev/full", 3, None),
])
def test_a_closed_standard_stream_is_one_line(tmp_path, image, args, redirect, code, message):
    _, raw = image
    snap = tmp_path / "s.vms"
    api.save(str(raw), str(snap))
    argv = " ".join(str(snap) if a == "SNAP" else a for a in args)
    p = subprocess.run(f"{sys.executable} -m vmsnap.cli {argv} {redirect}", shell=True, cwd=tmp_path,
                       capture_output=True, text=True)
    assert (p.returncode, p.stderr) == (code, f"vmsnap: error: {message}\n" if message else "")
    assert not (tmp_path / "x.vms").exists()


def test_demo_into_a_workdir_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_bytes(b"x")
    result = run("demo", "--workdir", str(tmp_path / "afile"))
    assert result.exit_code == OutputError.exit_code
    assert result.output == f"vmsnap: error: {tmp_path / 'afile'}: not a directory\n"


def test_messages_name_what_is_wrong(tmp_path, image):
    _, raw = image
    snap = tmp_path / "s.vms"
    api.save(str(raw), str(snap))
    size = len(raw.read_bytes())
    result = run("cat", str(snap), "--region", "ram", "--offset", str(size - 2), "--length", "4")
    assert result.exit_code == FormatError.exit_code and "beyond the end of region 'ram'," in result.output
    cut = tmp_path / "cut.vms"
    cut.write_bytes(snap.read_bytes()[:10])  # the magic, then nothing: truncated, not "bad magic"
    result = run("info", str(cut))
    assert result.exit_code == IntegrityError.exit_code and "truncated: 10 bytes" in result.output
    result = run("analyze", "mrc", str(tmp_path))  # a directory: an input error (3) like everywhere else
    assert result.exit_code == InputError.exit_code and "Is a directory" in result.output


def test_an_output_that_is_the_file_on_stdin_is_refused(image):
    # `vmsnap save - -o g.raw < g.raw` once replaced g.raw with its own snapshot.
    data, raw = image
    with open(raw, "rb") as stdin:
        p = subprocess.run([sys.executable, "-m", "vmsnap.cli", "save", "-", "-o", str(raw)], stdin=stdin,
                           capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr == f"vmsnap: error: {raw}: is the standard input; write the output to " \
                                             "another name\n"
    assert raw.read_bytes() == data


def test_pipe_in_pipe_out(tmp_path, image):
    data, raw = image
    p = subprocess.run(f"cat {raw} | {sys.executable} -m vmsnap.cli save - -o - --description x "
                       f"| tee {tmp_path}/s.vms > /dev/null && {sys.executable} -m vmsnap.cli restore "
                       f"{tmp_path}/s.vms -o -", shell=True, capture_output=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout == data


def test_json_goes_to_stderr_when_stdout_carries_the_data(tmp_path, image):
    # `save -o - --json` once appended its JSON to the snapshot on stdout.
    data, raw = image
    saved = subprocess.run([sys.executable, "-m", "vmsnap.cli", "save", str(raw), "-o", "-", "--json"],
                           capture_output=True)
    assert saved.returncode == 0, saved.stderr
    assert json.loads(saved.stderr)["bytes_out"] == len(saved.stdout)
    snap = tmp_path / "s.vms"
    snap.write_bytes(saved.stdout)
    assert run("verify", str(snap)).exit_code == 0
    restored = subprocess.run([sys.executable, "-m", "vmsnap.cli", "restore", str(snap), "-o", "-", "--json"],
                              capture_output=True)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == data
    assert json.loads(restored.stderr)["bytes"] == len(data)


def test_demo_runs_on_the_shipped_sample():
    result = run("demo")
    assert result.exit_code == 0
    assert "byte-identical" in result.output


def test_the_cli_module_imports_no_heavy_modules():  # what keeps --help fast
    code = "import sys, vmsnap.cli; print(sorted(m for m in ('numpy', 'zstandard', 'construct') if m in sys.modules))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.stdout.strip() == "[]"


@pytest.mark.parametrize("signame, code, message", [("SIGINT", 130, b"interrupted"), ("SIGTERM", 143, b"terminated")])
def test_ctrl_c_or_sigterm_exits_130_or_143_and_leaves_no_file(tmp_path, signame, code, message):
    import signal
    import time

    target = tmp_path / "out.vms"
    # stdin is a pipe we feed slowly, so the save is certainly still running when SIGINT comes
    proc = subprocess.Popen([sys.executable, "-m", "vmsnap.cli", "save", "-", "-o", str(target)],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(os.urandom(1 << 20))
    proc.stdin.flush()
    deadline = time.time() + 20
    while not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code
    assert message in err and b"Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_directory_and_odd_inputs(tmp_path):
    result = CliRunner().invoke(main, ["save", str(tmp_path), "-o", str(tmp_path / "x.vms")])
    assert result.exit_code == InputError.exit_code and "is a directory" in result.output
    result = CliRunner().invoke(main, ["restore", str(tmp_path), "-o", str(tmp_path / "x.raw")])
    assert result.exit_code == InputError.exit_code and "is a directory" in result.output
    for command in (["info", "-"], ["verify", "-"], ["restore", "-", "-o", str(tmp_path / "x.raw")],
                    ["save", "--format", "vms", "-", "-o", str(tmp_path / "x.vms")]):
        result = CliRunner().invoke(main, command, input=b"\x89VMSNAP\n")
        assert result.exit_code == InputError.exit_code and "standard input is not a regular file" in result.output, \
            command


def test_cat_streams_to_a_file_and_rejects_ranges_past_the_end(tmp_path, image):
    data, raw = image
    snap = tmp_path / "s.vms"
    assert run("save", str(raw), "-o", str(snap)).exit_code == 0
    out = tmp_path / "part.bin"
    assert run("cat", str(snap), "--offset", "100", "--length", "9000", "-o", str(out)).exit_code == 0
    assert out.read_bytes() == data[100:9100]
    result = CliRunner().invoke(main, ["cat", str(snap), "--offset", str(len(data) - 1), "--length", "2",
                                       "-o", str(tmp_path / "no.bin")])
    assert result.exit_code == FormatError.exit_code and "beyond the image end" in result.output
    assert not (tmp_path / "no.bin").exists()
    result = CliRunner().invoke(main, ["cat", str(snap), "--offset", "0", "--length", "1", "--region", "nope"])
    assert result.exit_code == FormatError.exit_code and "no region named 'nope'" in result.output


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("3", "3")])
def test_cli_runs_openblas_on_one_thread_unless_told(preset, expected):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if preset is not None:
        env["OPENBLAS_NUM_THREADS"] = preset
    code = "import vmsnap.cli, os; print(os.environ['OPENBLAS_NUM_THREADS'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == expected


def test_a_forked_worker_dies_of_sigterm_instead_of_raising():
    """analyze sharing forks workers, which inherit the CLI's SIGTERM handler; in them it
    must not raise (a traceback per worker), only let SIGTERM kill them as it would have."""
    import signal

    from vmsnap import cli

    previous = signal.signal(signal.SIGTERM, cli._on_sigterm)
    try:
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                signal.sigtimedwait([], 5)
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_the_cli_runs_from_a_thread_other_than_the_main_one(tmp_path, image):
    """Only the main thread may set signal handlers; from another thread the CLI keeps the default."""
    import threading

    data, raw = image
    out = {}
    t = threading.Thread(target=lambda: out.update(r=CliRunner().invoke(
        main, ["save", str(raw), "-o", str(tmp_path / "s.vms"), "-q"])))
    t.start()
    t.join(60)
    assert out["r"].exit_code == 0, out["r"].output
    with api.open_snapshot(str(tmp_path / "s.vms")) as snap:
        assert snap.read(0, len(data)) == data


def test_info_tables_stay_aligned_with_long_region_names(tmp_path):
    # QEMU's RAM blocks have names like /rom@etc/acpi/tables: the base column slid right.
    from vmsnap.format.writer import SnapshotWriter

    path = tmp_path / "s.vms"
    with open(path, "wb") as fh:
        w = SnapshotWriter(fh)
        w.add_region("pc.ram", 0, [build_image([("random", 1)])])
        w.add_region("/rom@etc/acpi/tables", 1 << 32, [build_image([("fill", 3)])])
        w.close()
    out = run("info", str(path)).output.splitlines()
    table = out[out.index(next(ln for ln in out if ln.startswith("region "))):][:3]
    assert len({ln.rindex("  ") for ln in table}) == 1, table  # the digest column starts at one place
    assert "in 1 frame," in "\n".join(out)
