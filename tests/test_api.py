"""The Python API mirrors the CLI: each command's function returns what its --json prints."""

import json

import numpy as np
from click.testing import CliRunner

import vmsnap
from vmsnap.cli import main
from vmsnap.traces.synthetic import loop_pages

from conftest import build_image


def cli_json(*args) -> dict:
    result = CliRunner().invoke(main, [*map(str, args), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_every_name_in_all_is_there():
    for name in vmsnap.__all__:
        assert getattr(vmsnap, name) is not None


def test_snapshot_commands(tmp_path):
    data = build_image([("random", 1), ("zero",), ("fill", 5), ("copy", 0)], tail=b"xyz")
    raw = tmp_path / "in.raw"
    raw.write_bytes(data)
    snap = str(tmp_path / "s.vms")
    saved = vmsnap.save(str(raw), snap)
    assert saved["bytes_in"] == len(data)
    assert vmsnap.info(snap) == cli_json("info", snap)
    assert vmsnap.verify(snap) == cli_json("verify", snap)
    assert vmsnap.cat(snap, 4096, 4099) == data[4096:8195]
    assert vmsnap.cat(snap, "4K", "0x1003") == data[4096:8195]  # sizes as the CLI takes them
    again = str(tmp_path / "again.vms")  # sizes as the CLI writes them
    vmsnap.save(str(raw), again, page_size="4K", frame_size="16M", slice_window="1G")
    assert open(again, "rb").read() == open(snap, "rb").read()
    restored = vmsnap.restore(snap, str(tmp_path / "r.raw"))
    assert restored["bytes"] == len(data) and (tmp_path / "r.raw").read_bytes() == data


def test_analyses(tmp_path):
    dumps = []
    for i in range(2):
        path = tmp_path / f"d{i}.raw"
        path.write_bytes(build_image([("random", i), ("zero",), ("fill", 7), ("random", 9)]))
        dumps.append(str(path))
    shared = vmsnap.analyze_sharing(dumps, jobs=1, page_size="4K")
    assert shared == cli_json("analyze", "sharing", *dumps, "-j", "1")
    assert shared["fleet"]["pages"] == 8
    assert vmsnap.analyze_hotcold(dumps, levels=3, page_size="4K") == cli_json("analyze", "hotcold", *dumps,
                                                                                "--levels", "3")
    whole = vmsnap.api.run_hotcold(dumps, levels=3, demote_after=2)  # what the text and CSV reports are made of
    # two dumps, one period: the zero page and the fill page stay, only the first random page changed
    assert (whole.n_pages, whole.accessed, whole.class_counts) == (4, [1], [[3, 0, 0, 1]])
    from vmsnap.analyze.hotcold import csv_text

    csv = CliRunner().invoke(main, ["analyze", "hotcold", *dumps, "--levels", "3", "--demote-after", "2", "--csv"])
    assert csv.exit_code == 0 and csv.output == csv_text(whole)
    trace = tmp_path / "loop.u64"
    (loop_pages(3000, 100) * np.uint64(4096)).astype("<u8").tofile(trace)
    curves = vmsnap.analyze_mrc(str(trace), sizes=[50, 100], method="untraced", rate=1.0, periods=[0, 10])
    assert curves == cli_json("analyze", "mrc", trace, "--sizes", "50,100", "--method", "untraced",
                              "--rate", "1", "--period", "0", "--period", "10")
    assert [p["pages"] for p in curves["curves"][0]["points"]] == [50, 100]
