"""`vmsnap analyze hotcold` through click's CliRunner: outputs, exit codes, error lines."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _hotcold_build import classic_workload, write_dumps, write_idle_dir
from click.testing import CliRunner
from conftest import within

from vmsnap.analyze.hotcold import read_levels
from vmsnap.cli import main


@pytest.fixture
def dumps(tmp_path):
    acc, groups = classic_workload(n_pages=25, periods=5)
    d = tmp_path / "dumps"
    d.mkdir()
    return write_dumps(d, acc), acc, groups


def run(*args):
    return CliRunner().invoke(main, ["analyze", "hotcold", *map(str, args)])


def test_text_report(dumps):
    paths, _, groups = dumps
    r = run(*paths)
    assert r.exit_code == 0, r.output
    assert "5 periods, 25 pages" in r.output
    hot_line = next(line for line in r.output.splitlines() if line.strip().startswith("hot:"))
    assert int(hot_line.split()[1]) == (groups == 0).sum()


def test_json_and_levels_out(dumps, tmp_path):
    paths, acc, groups = dumps
    out = tmp_path / "l.bin"
    r = run(*paths, "--json", "--out", out, "--demote-after", "2", "--levels", "3")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["params"] == {"levels": 3, "level_names": ["never", "cold", "warm", "hot"],
                             "demote_after": 2, "promote_by": 3}
    assert doc["input_format"] == "dumps" and doc["inputs"] == paths
    lf = read_levels(str(out))
    assert lf.n_levels == 3 and lf.demote_after == 2
    assert sum(doc["final"]["pages"].values()) == lf.levels.size == 25
    assert (lf.levels[groups == 4] == 0).all() and (lf.levels[groups == 0] == 3).all()


def test_csv(dumps):
    paths, acc, _ = dumps
    r = run(*paths, "--csv")
    assert r.exit_code == 0
    rows = r.output.strip().splitlines()
    assert rows[0].startswith("period,timestamp_ns,accessed_pages,wss_bytes,never")
    assert [int(x.split(",")[2]) for x in rows[1:]] == [int(a.sum()) for a in acc]


def test_save_series_then_reanalyse_gives_same_levels(dumps, tmp_path):
    paths, _, _ = dumps
    ser, l1, l2 = tmp_path / "s.vmscan", tmp_path / "a.bin", tmp_path / "b.bin"
    assert run(*paths, "--save-series", ser, "--out", l1).exit_code == 0
    r = run(ser, "--out", l2, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["input_format"] == "series"
    np.testing.assert_array_equal(read_levels(str(l1)).levels, read_levels(str(l2)).levels)


def test_idle_dir_with_page_size(tmp_path):
    acc, groups = classic_workload(n_pages=64, periods=4)
    d = write_idle_dir(tmp_path / "idle", acc)
    r = run(d, "--json", "--page-size", "2M")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["input_format"] == "idle" and doc["page_size"] == 2 << 20
    assert doc["final"]["pages"]["hot"] == (groups == 0).sum()


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--json", "--csv"], 2, "cannot be used together"),
        (["--levels", "1"], 2, "--levels must be"),
        (["--page-size", "4X"], 2, "not a size"),
        (["--format", "damon"], 2, "exactly one"),
        (["--page-size", "64", "--save-series", "s.vmscan"], 2,  # "64 is not a power of two >= 512" once
         "s.vmscan: a series file's page size is a power of two from 512, not 64"),
    ],
)
def test_usage_errors(dumps, args, code, message):
    paths, _, _ = dumps
    r = run(*paths, *args)
    assert r.exit_code == code
    assert message in r.output


def test_bad_inputs_exit_codes(tmp_path, dumps):
    paths, _, _ = dumps
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01 not a scan")
    r = run(junk)
    assert r.exit_code == 3 and "offset 0" in r.output
    short = tmp_path / "short.raw"
    short.write_bytes(b"\0" * 4096)
    r = run(paths[0], short)
    assert r.exit_code == 3 and "does not match" in r.output
    ser = tmp_path / "s.vmscan"
    assert run(*paths, "--save-series", ser).exit_code == 0
    data = bytearray(ser.read_bytes())
    data[50] ^= 1
    ser.write_bytes(bytes(data))
    r = run(ser)
    assert r.exit_code == 90 and "digest mismatch" in r.output
    assert "Traceback" not in r.output
    r = run(tmp_path / "missing.vmscan")
    assert r.exit_code == 3 and "no such file" in r.output


def test_failed_run_leaves_no_outputs(tmp_path, dumps):
    paths, _, _ = dumps
    short = tmp_path / "short.raw"
    short.write_bytes(b"\0" * 4096)
    r = run(paths[0], short, "--out", tmp_path / "l.bin", "--save-series", tmp_path / "s.vmscan")
    assert r.exit_code == 3
    assert not (tmp_path / "l.bin").exists() and not (tmp_path / "s.vmscan").exists()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.parametrize("option", ["--out", "--save-series", "--heatmap", "--plot"])
def test_an_output_that_is_an_input_is_refused(dumps, option):
    # Each of these once replaced the dump it was given with its own output, exit 0.
    paths, _, _ = dumps
    kept = open(paths[1], "rb").read()
    r = run(*paths, option, paths[1], "-q")
    assert r.exit_code == 2 and "is the input" in r.output and r.output.count("\n") == 1
    assert open(paths[1], "rb").read() == kept


def test_two_outputs_of_one_name_are_refused(dumps, tmp_path):
    paths, _, _ = dumps
    r = run(*paths, "--out", tmp_path / "x", "--save-series", tmp_path / "x", "-q")
    assert r.exit_code == 2 and "given to both --out and --save-series" in r.output
    assert not (tmp_path / "x").exists()


def test_help_lists_options():
    r = CliRunner().invoke(main, ["analyze", "hotcold", "--help"])
    assert r.exit_code == 0
    for opt in ("--format", "--levels", "--demote-after", "--promote-by", "--json", "--csv",
                "--out", "--heatmap", "--plot", "--save-series"):
        assert opt in r.output


def test_progress_bar_goes_to_stderr(dumps, capsys):
    """progress=True draws a tqdm bar on stderr; stdout stays clean for --json."""
    from vmsnap.analyze import hotcold as hc

    paths, _, _ = dumps
    res = hc.hotcold(paths, progress=True)
    err = capsys.readouterr()
    assert err.out == ""
    assert "dumps" in err.err and "B" in err.err
    assert res.n_periods == 5


@pytest.mark.parametrize("fmt", ["auto", "dumps", "series"])
def test_a_fifo_or_stdin_scan_is_refused_before_it_is_read(tmp_path, dumps, fmt):
    fifo = tmp_path / "scan.fifo"
    os.mkfifo(fifo)  # no writer: anything that opened it to read would wait here forever
    paths = dumps[0]
    for scans in ([str(fifo), *map(str, paths[1:])], ["-"]):
        r = within(20, CliRunner().invoke, main, ["analyze", "hotcold", "--format", fmt, *scans], b"")
        assert r.exit_code == 2 and "read from files, not stdin" in r.output, r.output


def test_a_forged_page_count_fails_on_size_not_memory(tmp_path):
    # A 40-byte series claiming 2**34 pages once made the analysis size its state for
    # them first: "out of memory", exit 1.
    import blake3

    from vmsnap.scans import structs as S

    raw = bytearray(S.Header.build(dict(version=1, flags=0, page_size=4096, n_pages=2**34, base=0,
                                        header_digest=b"\0" * 8)))
    raw[32:40] = blake3.blake3(bytes(raw[:32])).digest(8)
    path = tmp_path / "forged.vmscan"
    path.write_bytes(bytes(raw))
    r = run(path)
    assert r.exit_code == 90 and "offset 40: truncated" in r.output


def test_a_damon_region_spanning_an_address_space_is_refused_up_front(tmp_path):
    # [0, 2**60) is 2**48 pages: "out of memory", exit 1, after gigabytes were tried.
    from vmsnap.scans.damon import write_damo_json

    path = tmp_path / "huge.json"
    write_damo_json(str(path), [(0, 10, [(0, 1 << 60, 3)]), (10, 20, [(0, 1 << 60, 0)])])
    r = run(path, "-q")
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert f"{2**48} pages to classify need {2**48 * 5 >> 20} MiB of state (5 bytes a page)" in r.output
    assert "this machine has available" in r.output


def test_the_memory_check_counts_the_dumps_access_matrix(dumps, monkeypatch):
    # 25 pages, 5 periods: 5 bytes a page of state and 5 of the dumps' matrix. A machine of
    # 9 bytes a page holds the state alone, not both.
    from vmsnap.analyze import hotcold

    paths, _, _ = dumps
    monkeypatch.setattr(hotcold, "available_memory", lambda: 25 * 9)
    r = run(*paths, "-q")
    assert r.exit_code == 1 and "25 pages to classify need 0 MiB of state (10 bytes a page)" in r.output, r.output
    monkeypatch.setattr(hotcold, "available_memory", lambda: 25 * 10)
    assert run(*paths, "-q").exit_code == 0


def test_the_memory_check_counts_what_the_machine_has_available():
    # Against the total, a DAMON file of a few KB claiming 5 TiB was let through to take
    # 7 GiB of a machine that had less free, and the OOM killer ended it with no message.
    from vmsnap.analyze.hotcold import available_memory

    with open("/proc/meminfo") as fh:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
    assert abs(available_memory() - fields["MemAvailable"]) < fields["MemTotal"] // 20  # it moves while we look
    assert available_memory() < fields["MemTotal"]


def test_a_file_on_stdout_keeps_it_and_the_report_goes_to_stderr(dumps, tmp_path):
    # `-o - --json` once wrote the levels file and then the JSON into the same stdout.
    import subprocess
    import sys

    paths, _, _ = dumps
    p = subprocess.run([sys.executable, "-m", "vmsnap", "analyze", "hotcold", *map(str, paths), "--json", "-o", "-"],
                       capture_output=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(b"VMSNAPHC") and json.loads(p.stderr)["pages"] == 25
    (tmp_path / "l.bin").write_bytes(p.stdout)
    assert read_levels(str(tmp_path / "l.bin")).levels.size == 25
    r = run(*paths, "-q", "-o", "-", "--save-series", "-")  # two files cannot share it
    assert r.exit_code == 2 and "-: given to both --out and --save-series" in r.output
    with open("/dev/full", "wb") as full:  # an OSError traceback once
        p = subprocess.run([sys.executable, "-m", "vmsnap", "analyze", "hotcold", *map(str, paths), "-q", "-o", "-"],
                           stdout=full, stderr=subprocess.PIPE, text=True)
    assert (p.returncode, p.stderr) == (6, "vmsnap: error: stdout: no space left on device\n")


def test_a_page_size_beyond_a_huge_page_is_a_usage_error(dumps, tmp_path):
    # 4G went as far as the levels file's 32-bit field: a construct traceback.
    paths, _, _ = dumps
    r = run(*paths, "--page-size", "4G", "-o", tmp_path / "l.bin")
    assert r.exit_code == 2 and "not a power of two from 64 to 1073741824" in r.output
    assert not (tmp_path / "l.bin").exists()
