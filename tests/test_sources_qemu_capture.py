"""The readers against a real QEMU guest: three captures of the same stopped moment."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from qemu_fixture import qemu_capture  # noqa: F401  (pytest fixture)
from vmsnap.sources import open_source
from vmsnap.sources.elf import ElfSource
from vmsnap.sources.qemu_migration import QemuMigrationSource

pytestmark = pytest.mark.slow


def test_capture_is_what_the_script_promises(qemu_capture):
    meta = qemu_capture
    paths = meta["paths"]
    assert os.path.getsize(paths["raw"]) == meta["mem_mib"] << 20
    summary = "\n".join(meta["workload_summary"])
    assert "files 256 256 1048576 4194304" in summary  # docs, copy, random, pattern
    assert "workload done" in summary
    assert meta["tick_at_stop"] >= 3
    with open(paths["serial_log"]) as fh:
        ticks = [ln for ln in fh.read().splitlines() if "vmsnap-fixture: tick" in ln]
    # the guest was resumed for the live migration: the log goes on after the stop
    assert f"vmsnap-fixture: tick {meta['tick_at_stop']}" in ticks
    assert ticks[-1].endswith(f"tick {meta['live_xbzrle']['tick_at_end']}")
    assert meta["live_xbzrle"]["tick_at_end"] >= meta["tick_at_stop"]
    assert meta["migration_status"] == "completed"


def test_formats_are_detected(qemu_capture):
    paths = qemu_capture["paths"]
    for key, fmt in (("raw", "raw"), ("elf", "elf"), ("migration", "qemu")):
        with open_source(paths[key]) as src:
            assert src.format_name == fmt


def test_elf_segments_equal_the_raw_memory_file(qemu_capture):
    """Every PT_LOAD inside guest RAM holds exactly the raw file's bytes at p_paddr;
    the ones above it (firmware ROM) equal the migration stream's ROM blocks."""
    paths = qemu_capture["paths"]
    ram_size = os.path.getsize(paths["raw"])
    with QemuMigrationSource(paths["migration"]) as mig:
        roms = {r.name: b"".join(c) for r, c in mig.regions() if r.name != "pc.ram"}
    in_ram = 0
    outside = []
    with ElfSource(paths["elf"]) as elf, open(paths["raw"], "rb") as raw:
        assert elf.uncaptured == []
        for region, chunks in elf.regions():
            if region.base + region.size <= ram_size:
                raw.seek(region.base)
                for chunk in chunks:
                    assert raw.read(len(chunk)) == chunk, region
                in_ram += region.size
            else:
                data = b"".join(chunks)
                outside.append(region)
                matches = [name for name, rom in roms.items() if rom == data]
                assert matches, f"{region} matches no RAM block of the migration stream"
    assert in_ram == ram_size  # all of the guest's RAM is in the core, once
    # q35 maps the BIOS at the top of 4 GiB
    assert [r.base + r.size for r in outside] == [1 << 32]


def test_migration_pc_ram_equals_the_raw_memory_file(qemu_capture):
    paths = qemu_capture["paths"]
    raw_sha = hashlib.sha256()
    with open(paths["raw"], "rb") as raw:
        while chunk := raw.read(4 << 20):
            raw_sha.update(chunk)
    with QemuMigrationSource(paths["migration"]) as src:
        assert src.machine.startswith("pc-q35-")
        regions = {}
        for region, chunks in src.regions():
            h = hashlib.sha256()
            n = 0
            for chunk in chunks:
                h.update(chunk)
                n += len(chunk)
            assert n == region.size
            regions[region.name] = (region, h.hexdigest())
        assert src.unsent_pages["pc.ram"] == 0
        assert src.records["page"] + src.records["zero"] >= src.size_hint // 4096
        assert src.device_state_offset < os.path.getsize(paths["migration"])
    pc_ram, digest = regions["pc.ram"]
    assert pc_ram.base == 0 and pc_ram.size == os.path.getsize(paths["raw"])
    assert digest == raw_sha.hexdigest() == qemu_capture["raw_sha256"]
    assert {"pc.bios", "pc.rom"} <= set(regions)


def test_migration_reader_memory_is_bounded(qemu_capture):
    import tracemalloc

    tracemalloc.start()
    try:
        with QemuMigrationSource(qemu_capture["paths"]["migration"]) as src:
            for _, chunks in src.regions():
                for _ in chunks:
                    pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, f"peak {peak} bytes while reading {src.size_hint} bytes of RAM"


def test_meta_records_the_commands(qemu_capture):
    meta = qemu_capture
    cmd = " ".join(meta["qemu_command"])
    assert "memory-backend-file,id=pc.ram" in cmd and "share=on" in cmd
    executed = [step["execute"] for step in meta["qmp_sequence"]]
    assert executed[:4] == ["qmp_capabilities", "stop", "query-status", "dump-guest-memory"]
    assert "migrate" in executed and executed[-1] == "quit"
    json.dumps(meta)  # serialisable for the bench results


def test_live_xbzrle_stream_reads_as_qemu_itself_loads_it(qemu_capture):
    """A stream taken while the guest ran, with XBZRLE: pages sent several times,
    later ones as deltas. The reader's pc.ram must equal the memory a second QEMU
    holds after loading the same stream with -incoming."""
    paths = qemu_capture["paths"]
    live = qemu_capture["live_xbzrle"]
    assert live["status"] == "completed" and live["dirty_sync_count"] >= 4
    with QemuMigrationSource(paths["live_migration"]) as src:
        digests = {}
        for region, chunks in src.regions():
            h = hashlib.sha256()
            for chunk in chunks:
                h.update(chunk)
            digests[region.name] = h.hexdigest()
        records = dict(src.records)
    # the capture really exercised deltas and repeated pages
    assert records["xbzrle"] > 0
    assert records["page"] + records["zero"] + records["xbzrle"] > src.size_hint // 4096
    loaded = hashlib.sha256()
    with open(paths["live_loaded"], "rb") as fh:
        while chunk := fh.read(4 << 20):
            loaded.update(chunk)
    assert digests["pc.ram"] == loaded.hexdigest()


def test_compressed_stream_reads_as_the_memory_of_its_moment(qemu_capture):
    """Pages sent as zlib COMPRESS_PAGE records (QEMU's "compress" capability)."""
    info = qemu_capture["compressed_migration"]
    if info is False:
        pytest.skip(f"{qemu_capture['versions']['qemu']} has no 'compress' capability (QEMU >= 9.1)")
    with QemuMigrationSource(qemu_capture["paths"]["migration_compressed"]) as src:
        for region, chunks in src.regions():
            if region.name == "pc.ram":
                h = hashlib.sha256()
                for chunk in chunks:
                    h.update(chunk)
                digest = h.hexdigest()
        records = dict(src.records)
    assert records["compressed"] > 1000
    assert digest == info["ram_sha256"]


# ---------------------------------------------------------------- round trips through .vms


def _sha_file(path, start=0, size=None):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(start)
        left = size
        while left is None or left > 0:
            chunk = fh.read(4 << 20 if left is None else min(4 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def test_elf_core_round_trips_through_vms(qemu_capture, tmp_path):
    """save core.elf, restore flat: every PT_LOAD's bytes at its guest-physical address."""
    from vmsnap import api

    paths = qemu_capture["paths"]
    vms = str(tmp_path / "core.vms")
    summary = api.save(paths["elf"], vms)
    assert summary["format"] == "elf"
    flat = str(tmp_path / "flat.img")
    api.restore(vms, flat)
    with ElfSource(paths["elf"]) as elf:
        segments = list(elf.segments)
    ram_size = os.path.getsize(paths["raw"])
    for seg in segments:
        restored = _sha_file(flat, seg.paddr, seg.filesz)
        assert restored == _sha_file(paths["elf"], seg.offset, seg.filesz), seg
        if seg.paddr + seg.filesz <= ram_size:
            assert restored == _sha_file(paths["raw"], seg.paddr, seg.filesz), seg


def test_migration_stream_round_trips_through_vms(qemu_capture, tmp_path):
    """save stream.mig, restore pc.ram: the raw memory file of the same moment."""
    from vmsnap import api

    paths = qemu_capture["paths"]
    vms = str(tmp_path / "stream.vms")
    assert api.save(paths["migration"], vms)["format"] == "qemu"
    out = str(tmp_path / "pc.ram")
    api.restore(vms, out, region="pc.ram")
    assert _sha_file(out) == qemu_capture["raw_sha256"]
    # the live XBZRLE stream: pc.ram as QEMU itself loads it
    vms = str(tmp_path / "live.vms")
    api.save(paths["live_migration"], vms)
    api.restore(vms, out, region="pc.ram")
    assert _sha_file(out) == _sha_file(paths["live_loaded"])
