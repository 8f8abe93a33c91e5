"""`vmsnap analyze mrc` through click's CliRunner: schema fields, exit codes, outputs."""

from __future__ import annotations

import csv
import io
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from vmsnap.cli import main
from vmsnap.traces.synthetic import loop_pages

CURVE_FIELDS = {
    "label", "method", "rate", "period", "period_unit", "max_pages", "references", "sampled_references", "traps",
    "trap_fraction", "distinct_pages", "distinct_bytes", "knee", "target", "error_vs_exact", "points",
}


@pytest.fixture
def loop_trace(tmp_path):
    """300 pages scanned 20 times as byte addresses: exact curve known by construction."""
    p = tmp_path / "loop.u64"
    (loop_pages(6000, 300) * np.uint64(4096) + np.uint64(123)).astype("<u8").tofile(p)
    return p


def run(*args):
    return CliRunner().invoke(main, ["analyze", "mrc", *map(str, args)])


def test_json_schema_and_values(loop_trace):
    r = run(loop_trace, "--json", "--target-miss-ratio", "0.1", "--sizes", "1,299,300,2M")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["schema"] == "vmsnap.mrc/1" and doc["method"] == "exact"
    assert doc["trace"] == {"path": str(loop_trace), "format": "u64", "compressed": False,
                            "page_size": 4096, "references": 6000}
    (c,) = doc["curves"]
    assert set(c) == CURVE_FIELDS
    assert [p["pages"] for p in c["points"]] == [1, 299, 300, 512]
    assert [p["bytes"] for p in c["points"]] == [4096, 299 * 4096, 300 * 4096, 2 << 20]
    assert [p["miss_ratio"] for p in c["points"]] == [1.0, 1.0, 0.05, 0.05]
    assert c["knee"]["pages"] == 300 and c["target"] == {"miss_ratio": 0.1, "pages": 300, "bytes": 300 * 4096}
    assert c["distinct_pages"] == 300


def test_page_size_2m_and_values_page(loop_trace):
    r = run(loop_trace, "--json", "--page-size", "2M")
    doc = json.loads(r.output)
    assert doc["trace"]["page_size"] == 2 << 20
    assert doc["curves"][0]["distinct_pages"] == 1  # 300 * 4 KiB fit in one 2 MiB page
    r = run(loop_trace, "--json", "--values", "page")
    assert json.loads(r.output)["curves"][0]["distinct_pages"] == 300


def test_csv_output(loop_trace):
    r = run(loop_trace, "--csv", "--method", "untraced", "--rate", "1", "--period", "0", "--period", "500",
            "--points", "10")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert list(rows[0]) == ["label", "method", "rate", "period", "pages", "bytes", "miss_ratio"]
    assert {row["method"] for row in rows} == {"exact", "untraced"}
    assert {row["period"] for row in rows if row["method"] == "untraced"} == {"0", "500"}
    for row in rows:
        assert int(row["bytes"]) == 4096 * int(row["pages"])


def test_untraced_json_reports_traps_and_error(loop_trace):
    r = run(loop_trace, "--json", "--method", "untraced", "--rate", "1", "--period", "0", "--period", "100000")
    doc = json.loads(r.output)
    exact, p0, pbig = doc["curves"]
    assert exact["method"] == "exact"
    assert p0["traps"] == 6000 and p0["error_vs_exact"]["mae"] == 0.0
    assert pbig["traps"] == 300 and pbig["trap_fraction"] == pytest.approx(300 / 6000)


def test_shards_compare_exact(loop_trace):
    r = run(loop_trace, "--json", "--method", "shards", "--rate", "0.5", "--compare-exact")
    doc = json.loads(r.output)
    assert [c["method"] for c in doc["curves"]] == ["exact", "shards"]
    assert doc["curves"][1]["error_vs_exact"]["mae"] >= 0
    r = run(loop_trace, "--json", "--method", "shards-fixed-size", "--max-pages", "50")
    assert json.loads(r.output)["curves"][0]["max_pages"] == 50


def test_text_output(loop_trace):
    r = run(loop_trace, "--target-miss-ratio", "0.01")
    assert r.exit_code == 0
    assert "exact: 300 distinct pages" in r.output and "unreachable" in r.output


def test_plot(loop_trace, tmp_path):
    out = tmp_path / "mrc.png"
    r = run(loop_trace, "--method", "untraced", "--rate", "1", "--period", "10", "--plot", out)
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("mrc.png")] == ["mrc.png"]


def test_plot_without_matplotlib_is_a_usage_error(loop_trace, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = run(loop_trace, "--plot", tmp_path / "x.png")
    assert r.exit_code == 2 and "matplotlib" in r.output and not (tmp_path / "x.png").exists()
    # said before the trace is read, not after the whole computation
    kept = open(loop_trace, "rb").read()
    r = run(loop_trace, "--plot", loop_trace)  # refused before matplotlib is even asked for
    assert r.exit_code == 2 and "is the input" in r.output and open(loop_trace, "rb").read() == kept
    r = run(tmp_path / "no-such-trace", "--plot", tmp_path / "x.png")
    assert r.exit_code == 2 and "matplotlib" in r.output


@pytest.mark.parametrize("args, code, text", [
    (["--json", "--csv"], 2, "cannot be used together"),
    (["--rate", "0", "--method", "shards"], 2, "sampling rate"),
    (["--page-size", "3000"], 2, "power of two"),
    (["--page-size", "lots"], 2, "not a size"),
    (["--target-miss-ratio", "2"], 2, "between 0 and 1"),
    (["--column", "2"], 2, "CSV"),
    (["--method", "untraced", "--period", "-1"], 2, "period"),
])
def test_usage_errors(loop_trace, args, code, text):
    r = run(loop_trace, *args)
    assert r.exit_code == code and text in r.output and "Traceback" not in r.output


def test_input_and_format_errors(tmp_path):
    r = run(tmp_path / "missing.u64")
    assert r.exit_code == 3 and "missing.u64" in r.output
    bad = tmp_path / "bad.lackey"
    bad.write_bytes(b"I  0400,3\n L zz,8\n")
    r = run(bad)
    assert r.exit_code == 4 and "line 2" in r.output
    short = tmp_path / "short.u64"
    short.write_bytes(b"\x00" * 12)
    r = run(short)
    assert r.exit_code == 3 and "byte offset 8" in r.output


def test_period_in_time_units_needs_timestamps(loop_trace, tmp_path):
    r = run(loop_trace, "--method", "untraced", "--period-unit", "time")
    assert r.exit_code == 2 and "timestamps" in r.output
    r = run(loop_trace, "--period-unit", "time")
    assert r.exit_code == 2 and "untraced" in r.output
    csvp = tmp_path / "t.csv"
    csvp.write_text("time,addr\n" + "".join(f"{10 * i},{(i % 7) * 4096}\n" for i in range(200)))
    r = run(csvp, "--json", "--column", "addr", "--time-column", "time", "--method", "untraced", "--rate", "1",
            "--period-unit", "time", "--period", "0", "--period", "100")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert [c["period_unit"] for c in doc["curves"]] == [None, "time", "time"]
    # Each page recurs every 70 time units: a 100-unit window hides every other access.
    per_page = [sum(1 for i in range(200) if i % 7 == k) for k in range(7)]
    assert [c["traps"] for c in doc["curves"][1:]] == [200, sum((a + 1) // 2 for a in per_page)]


def test_plot_file_gets_umask_permissions(loop_trace, tmp_path):
    import os

    out = tmp_path / "p.png"
    assert run(loop_trace, "--plot", out).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("quiet, enabled", [(False, None), (True, False)])
def test_quiet_turns_the_progress_counter_off(loop_trace, monkeypatch, quiet, enabled):
    from vmsnap import api

    asked, real = [], api.progress_bar

    def spy(total, desc, on=None, **kw):
        asked.append(on)
        return real(total, desc, on, **kw)

    monkeypatch.setattr(api, "progress_bar", spy)
    r = run(loop_trace, "--json", *(["-q"] if quiet else []))
    assert r.exit_code == 0, r.output
    assert asked == [enabled]  # None: a counter only when stderr is a terminal
    assert json.loads(r.output)["curves"][0]["distinct_pages"] == 300


def test_trace_from_stdin_through_a_pipe(loop_trace):
    import subprocess

    piped = subprocess.run([sys.executable, "-m", "vmsnap.cli", "analyze", "mrc", "-", "--format", "u64", "--json"],
                           input=loop_trace.read_bytes(), capture_output=True, check=True)
    from_file = json.loads(run(loop_trace, "--json").output)
    doc = json.loads(piped.stdout)
    assert doc["trace"]["path"] == "-" and doc["trace"]["references"] == 6000
    assert doc["curves"] == from_file["curves"]


def test_delimiter_tab_and_bad_delimiters(tmp_path):
    trace = tmp_path / "t.tsv"
    trace.write_text("when\taddr\n1\t4096\n2\t8192\n3\t4096\n")
    r = run(trace, "--format", "csv", "--column", "addr", "--delimiter", "\\t", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["curves"][0]["distinct_pages"] == 2
    for bad in (";;", ""):  # a TypeError traceback once
        r = run(trace, "--format", "csv", "--delimiter", bad)
        assert r.exit_code == 2 and "--delimiter must be one character" in r.output


def test_a_plot_on_stdout_keeps_it_and_the_report_goes_to_stderr(loop_trace):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "vmsnap", "analyze", "mrc", str(loop_trace), "--json", "--plot", "-"],
                       capture_output=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(b"\x89PNG\r\n\x1a\n") and p.stdout.endswith(b"IEND\xaeB`\x82")
    assert json.loads(p.stderr)["curves"][0]["distinct_pages"] == 300


def test_a_page_size_beyond_a_huge_page_is_refused(loop_trace):
    r = run(loop_trace, "--page-size", "2G")  # once accepted: "1 distinct pages (2.0 GiB)"
    assert r.exit_code == 2 and "up to 1 GiB" in r.output


def test_sizes_in_pages_or_bytes(loop_trace):
    r = run(loop_trace, "--json", "--sizes", "1,8K,0x3000")  # pages, then bytes rounded up to pages
    assert [p["pages"] for p in json.loads(r.output)["curves"][0]["points"]] == [1, 2, 3]
    for bad, message in (("0K", ">= 1 page"), ("\u00b2", "is not a size")):  # 1 page, and a traceback, once
        r = run(loop_trace, "--sizes", bad)
        assert r.exit_code == 2 and message in r.output, r.output


def test_the_text_report_shows_a_miss_ratio_below_one_in_ten_thousand(tmp_path):
    # Four decimals printed 0.0000 for the cold-miss floor of 4e-05 that the same report named.
    path = tmp_path / "long.u64"
    (loop_pages(2_500_000, 100) * np.uint64(4096)).astype("<u8").tofile(path)
    r = run(str(path), "--sizes", "100")
    assert r.exit_code == 0, r.output
    row = next(ln.split() for ln in r.output.splitlines() if ln.split()[:1] == ["100"])
    assert row[-1] == "0.000040"
