"""The index tables a save fills: bounded in memory, the rest in a temporary file."""

import os
import random
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vmsnap
from conftest import build_image
from test_roundtrip import _random_spec
from vmsnap import api
from vmsnap.errors import OutputError
from vmsnap.format import tables
from vmsnap.format.writer import SnapshotWriter

SLOW_PATH = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@given(st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=50), max_size=12),
       st.integers(0, 400), st.integers(1, 300))
@settings(max_examples=200, **SLOW_PATH)
def test_table_gives_back_what_was_appended_in_whole_entries(monkeypatch, parts, memory, read_back):
    monkeypatch.setattr(tables, "TABLE_MEMORY_BYTES", memory)
    monkeypatch.setattr(tables, "READ_BACK_BYTES", read_back)
    arrays = [np.array(p, dtype="<u8") for p in parts]
    table = tables.SpillTable(8, "test table")
    for a in arrays:
        table.append(a)
    whole = np.concatenate(arrays) if arrays else np.zeros(0, "<u8")
    try:
        assert len(table) == whole.nbytes and table.entries == len(whole)
        assert table.spilled == (whole.nbytes > memory)
        chunks = list(table.chunks())
        assert all(len(c) % 8 == 0 and len(c) for c in chunks)
        assert b"".join(bytes(c) for c in chunks) == whole.tobytes()
        # the sparse table's offsets are the running sum of its counts, made a piece at a time
        offsets = tables.RunningOffsets(table)
        made = b"".join(bytes(c) for c in offsets.chunks())
        assert len(made) == len(offsets)
        assert made == np.concatenate([np.zeros(1, np.uint64), np.cumsum(whole, dtype=np.uint64)]).astype("<u8").tobytes()
    finally:
        table.close()


def test_a_table_takes_whole_entries_only():
    table = tables.SpillTable(16, "block digests")
    with pytest.raises(ValueError):
        table.append(bytes(17))


def _write(path, regions, page_size, **knobs):
    with open(path, "wb") as fh:
        w = SnapshotWriter(fh, page_size=page_size, frame_size=page_size * 3, **knobs)
        for name, base, data in regions:
            w.add_region(name, base, [data])
        return w.close()


@given(st.integers(0, 2**32))
@example(119661)  # one small region: no table outgrew a bound of 100 bytes
@example(0)
@settings(max_examples=25, **SLOW_PATH)
def test_a_snapshot_is_the_same_bytes_whether_its_tables_spill_or_not(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    ps = rng.choice([512, 4096])
    regions = [(f"r{i}", i << 30, build_image(_random_spec(rng, rng.randrange(1, 300), ps), ps,
                                             rng.randbytes(rng.randrange(ps))))
               for i in range(rng.choice([1, 2, 3]))]
    _write(tmp_path / "held.vms", regions, ps)
    made = []
    real = tempfile.TemporaryFile
    bound = rng.choice([0, 16, 100])
    monkeypatch.setattr(tables, "TABLE_MEMORY_BYTES", bound)
    monkeypatch.setattr(tables, "READ_BACK_BYTES", rng.choice([1, 48, 1 << 20]))
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kw: made.append(kw) or real(**kw))
    _write(tmp_path / "spilled.vms", regions, ps)
    with vmsnap.open(str(tmp_path / "held.vms")) as s:
        largest = max(s.records.nbytes, s.sparse_words.nbytes, s.sparse_offsets.nbytes - 8, s.block_digests.nbytes)
    assert bool(made) == (largest > bound)  # a table goes to a file exactly when it outgrows the bound
    assert (tmp_path / "spilled.vms").read_bytes() == (tmp_path / "held.vms").read_bytes()
    with vmsnap.open(str(tmp_path / "spilled.vms")) as s:
        for name, _, data in regions:
            assert s.read(0, len(data), region=name, check_blocks=True) == data


def test_spilled_tables_leave_nothing_in_tmpdir(tmp_path, monkeypatch):
    spill_dir = tmp_path / "tmp"
    spill_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_dir))
    monkeypatch.setattr(tables, "TABLE_MEMORY_BYTES", 0)
    data = build_image(_random_spec(random.Random(3), 200, 4096))
    (tmp_path / "in.raw").write_bytes(data)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    assert os.listdir(spill_dir) == []
    with vmsnap.open(str(tmp_path / "s.vms")) as s:
        assert s.read(0, len(data)) == data


def test_a_full_tmpdir_is_exit_6_and_leaves_no_snapshot(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from conftest import char_device
    from vmsnap.cli import main

    full = char_device(tmp_path, "full", 7)
    monkeypatch.setattr(tables, "TABLE_MEMORY_BYTES", 0)
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kw: open(full, "r+b", buffering=0))
    raw, snap = tmp_path / "in.raw", tmp_path / "s.vms"
    raw.write_bytes(build_image(_random_spec(random.Random(5), 100, 4096)))
    result = CliRunner().invoke(main, ["save", str(raw), "-o", str(snap), "-q"])
    assert result.exit_code == 6, result.output
    line, = result.output.strip().splitlines()
    assert line.startswith("vmsnap: error: temporary file for the ") and \
        line.endswith(f" in {tempfile.gettempdir()}: no space left on device"), line
    assert not snap.exists() and sorted(os.listdir(tmp_path)) == ["full", "in.raw"]


def test_api_error_is_output_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "TABLE_MEMORY_BYTES", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    (tmp_path / "in.raw").write_bytes(build_image(_random_spec(random.Random(6), 50, 4096)))
    with pytest.raises(OutputError, match=r"temporary file for the .* in .*missing"):
        api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    assert not (tmp_path / "s.vms").exists()
