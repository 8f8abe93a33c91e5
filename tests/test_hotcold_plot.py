"""Plots render (matplotlib is in the test extra) and a missing matplotlib is a clear usage error."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from _hotcold_build import classic_workload, write_dumps
from click.testing import CliRunner

from vmsnap.cli import main


@pytest.fixture
def dumps(tmp_path):
    acc, _ = classic_workload(n_pages=200, periods=8)
    d = tmp_path / "dumps"
    d.mkdir()
    return write_dumps(d, acc)


def _png_pixels(path):
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(str(path))


def test_heatmap_and_class_plot_render(dumps, tmp_path):
    heat, plot = tmp_path / "heat.png", tmp_path / "classes.png"
    r = CliRunner().invoke(main, ["analyze", "hotcold", *dumps, "--heatmap", str(heat),
                                  "--plot", str(plot), "--heatmap-bins", "50"])
    assert r.exit_code == 0, r.output
    for p in (heat, plot):
        img = _png_pixels(p)
        assert img.shape[0] >= 300 and img.shape[1] >= 600
        # non-trivial: many distinct colours, not a blank canvas
        assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 20


def test_missing_matplotlib_is_a_usage_error(dumps, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails like when not installed
    r = CliRunner().invoke(main, ["analyze", "hotcold", *dumps, "--heatmap", str(tmp_path / "h.png"),
                                  "--out", str(tmp_path / "l.bin")])
    assert r.exit_code == 2
    assert "plots need matplotlib: pip install 'vmsnap[plot]'" in r.output
    assert not (tmp_path / "h.png").exists() and not (tmp_path / "l.bin").exists()
    # the numbers never need it
    r = CliRunner().invoke(main, ["analyze", "hotcold", *dumps, "--json"])
    assert r.exit_code == 0
