"""Fuzz the QEMU migration stream reader (vmsnap.sources.qemu_migration): any error but
vmsnap's own is a finding, and a stream read from a pipe must yield what it yields read as a
file. Seeds (tests/source_builders.py): precopy streams with every page record kind (page,
zero, XBZRLE delta, zlib-compressed), runs of pages and of zero pages, a command, with and
without section footers, 8 KiB target pages, x-ignore-shared."""

from __future__ import annotations

import random

import harness
from source_builders import StreamBuilder, simple_stream, xbzrle_encode

with harness.instrumented():
    from vmsnap.sources.qemu_migration import QemuMigrationSource

PS = 4096
BLOCKS = [("pc.ram", 4 * PS), ("pc.bios", 2 * PS), ("/rom@etc/acpi/rsdp", PS)]


def seeds() -> dict[str, bytes]:
    rng = random.Random(1)
    p1 = bytes(PS - 64) + rng.randbytes(64)
    p2 = bytes(range(256)) * (PS // 256)
    edited = p2[:100] + b"RSD PTR " + p2[108:]
    pages = [("page", "pc.ram", 0, p2), ("zero", "pc.ram", PS, 0), ("xbzrle", "pc.ram", 0, xbzrle_encode(p2, edited)),
             ("zero", "pc.bios", 0, 0x5A), ("compressed", "pc.bios", PS, p1), ("page", "pc.ram", 3 * PS, p1),
             ("xbzrle", "/rom@etc/acpi/rsdp", 0, xbzrle_encode(bytes(PS), bytes(100) + b"RSD PTR " + bytes(PS - 108)))]
    big = StreamBuilder(page_size=8192)
    big.header()
    big.configuration(machine="virt-7.2", page_bits=13, uuid=b"U" * 16)
    big.section_start()
    big.mem_size([("mach-virt.ram", 2 * 8192)])
    big.eos()
    big.footer()
    big.section_end()
    big.page("mach-virt.ram", 8192, b"\x07" * 8192)
    big.eos()
    big.footer()
    big.eof()
    runs = StreamBuilder()  # runs of PAGE and of ZERO records (the reader's fast paths), a PING command
    runs.header()
    runs.configuration()
    runs.section_start()
    runs.mem_size([("pc.ram", 24 * PS)])
    runs.eos()
    runs.footer()
    runs.command(2, b"\x00\x00\x00\x01")
    runs.section_part()
    for i, data in enumerate((p1, p2, edited)):
        runs.page("pc.ram", i * PS, data)
    for i in range(3, 23):
        runs.zero("pc.ram", i * PS)
    runs.eos()
    runs.footer()
    runs.section_end()
    runs.eos()
    runs.footer()
    runs.eof()
    return {
        "precopy": simple_stream(BLOCKS, pages)[0].bytes(),
        "runs": runs.bytes(),
        "no-footers": simple_stream(BLOCKS, pages[:4], footers=False, device_tail=False)[0].bytes(),
        "8k-pages": big.bytes(),
        "x-ignore-shared": simple_stream(BLOCKS, pages, caps=("x-ignore-shared",))[0].bytes(),
    }


def test_one_input(data: bytes) -> None:
    harness.read_both_ways(lambda path, fh: QemuMigrationSource(path, fh=fh, tmpdir=harness.scratch()), data, "in.mig")


if __name__ == "__main__":
    harness.main(test_one_input, seeds)
