"""QEMU migration stream definitions (file version 3, QEMU 2.x through 9.x and later).

Definitions only; the reader is vmsnap/sources/qemu_migration.py. All integers
are big-endian. Layout, from QEMU's migration/savevm.c and migration/ram.c:

  stream   = be32 magic "QEVM"  be32 version (3)
             [ u8 CONFIGURATION(7) configuration ]
             record*   (until u8 EOF(0); then optional u8 VMDESCRIPTION(6) be32 len json)
  configuration = be32 len  name[len]  (e.g. "pc-q35-7.2")
             subsection*  ; u8 SUBSECTION(5) u8 len idstr[len] be32 version_id fields
               "configuration/target-page-bits": be32 bits
               "configuration/capabilities":     be32 n, n x (u8 len, name[len])
               "configuration/uuid":             16 bytes
  record   = u8 SECTION_START(1)|SECTION_FULL(4) be32 section_id
                 u8 len idstr[len] be32 instance_id be32 version_id  data  [footer]
           | u8 SECTION_PART(2)|SECTION_END(3) be32 section_id  data  [footer]
           | u8 COMMAND(8) be16 cmd be16 len  data[len]
  footer   = u8 SECTION_FOOTER(0x7e) be32 section_id

The "ram" section (version 4) is a run of page records ending with EOS:
  be64 (offset | flags)   flags = the low TARGET_PAGE_BITS bits
  MEM_SIZE: offset = total bytes; then per RAM block: u8 len idstr be64 used_length
            [be64 page_size: postcopy with huge pages] [be64 mr->addr: x-ignore-shared]
  ZERO|PAGE|XBZRLE|COMPRESS_PAGE without CONTINUE: u8 len idstr (block), then
    ZERO:          u8 fill byte (the whole page is that byte; QEMU sends 0)
    PAGE:          TARGET_PAGE_SIZE bytes
    XBZRLE:        u8 encoding (1) be16 len, len bytes of XBZRLE runs
    COMPRESS_PAGE: be32 len, len bytes of zlib stream (QEMU <= 9.0)
  CONTINUE: the page is in the same block as the previous page record.
"""

from __future__ import annotations

from construct import Const, Int32ub, PascalString, Int8ub, Struct

QEMU_VM_FILE_MAGIC = b"QEVM"
QEMU_VM_FILE_VERSION = 3
QEMU_VM_FILE_VERSION_COMPAT = 2

# top-level record types
QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_START = 0x01
QEMU_VM_SECTION_PART = 0x02
QEMU_VM_SECTION_END = 0x03
QEMU_VM_SECTION_FULL = 0x04
QEMU_VM_SUBSECTION = 0x05
QEMU_VM_VMDESCRIPTION = 0x06
QEMU_VM_CONFIGURATION = 0x07
QEMU_VM_COMMAND = 0x08
QEMU_VM_SECTION_FOOTER = 0x7E

SECTION_NAMES = {
    QEMU_VM_EOF: "EOF",
    QEMU_VM_SECTION_START: "SECTION_START",
    QEMU_VM_SECTION_PART: "SECTION_PART",
    QEMU_VM_SECTION_END: "SECTION_END",
    QEMU_VM_SECTION_FULL: "SECTION_FULL",
    QEMU_VM_SUBSECTION: "SUBSECTION",
    QEMU_VM_VMDESCRIPTION: "VMDESCRIPTION",
    QEMU_VM_CONFIGURATION: "CONFIGURATION",
    QEMU_VM_COMMAND: "COMMAND",
    QEMU_VM_SECTION_FOOTER: "SECTION_FOOTER",
}

# QEMU_VM_COMMAND sub-commands (enum qemu_vm_cmd)
MIG_CMD_OPEN_RETURN_PATH = 1
MIG_CMD_PING = 2
MIG_CMD_POSTCOPY_ADVISE = 3
MIG_CMD_PACKAGED = 7
MIG_CMD_NAMES = {
    1: "OPEN_RETURN_PATH",
    2: "PING",
    3: "POSTCOPY_ADVISE",
    4: "POSTCOPY_LISTEN",
    5: "POSTCOPY_RUN",
    6: "POSTCOPY_RAM_DISCARD",
    7: "PACKAGED",
    8: "ENABLE_COLO",
    9: "POSTCOPY_RESUME",
    10: "RECV_BITMAP",
}
# Commands that carry no RAM and do not change how the RAM records are laid out.
HARMLESS_COMMANDS = {MIG_CMD_OPEN_RETURN_PATH, MIG_CMD_PING}

# RAM page record flags (low bits of the be64 record header)
RAM_SAVE_FLAG_FULL = 0x01  # obsolete since 2009
RAM_SAVE_FLAG_ZERO = 0x02
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_PAGE = 0x08
RAM_SAVE_FLAG_EOS = 0x10
RAM_SAVE_FLAG_CONTINUE = 0x20
RAM_SAVE_FLAG_XBZRLE = 0x40
RAM_SAVE_FLAG_HOOK = 0x80  # RDMA only
RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100  # removed in QEMU 9.1
RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200  # QEMU 8.0+, pages travel on multifd channels

RAM_FLAG_NAMES = {
    RAM_SAVE_FLAG_FULL: "FULL",
    RAM_SAVE_FLAG_ZERO: "ZERO",
    RAM_SAVE_FLAG_MEM_SIZE: "MEM_SIZE",
    RAM_SAVE_FLAG_PAGE: "PAGE",
    RAM_SAVE_FLAG_EOS: "EOS",
    RAM_SAVE_FLAG_CONTINUE: "CONTINUE",
    RAM_SAVE_FLAG_XBZRLE: "XBZRLE",
    RAM_SAVE_FLAG_HOOK: "HOOK",
    RAM_SAVE_FLAG_COMPRESS_PAGE: "COMPRESS_PAGE",
    RAM_SAVE_FLAG_MULTIFD_FLUSH: "MULTIFD_FLUSH",
}

RAM_SECTION_VERSION = 4
ENCODING_FLAG_XBZRLE = 0x01
DEFAULT_TARGET_PAGE_BITS = 12  # no target-page-bits subsection: the CPU's minimum (4 KiB on x86)

CONFIG_SUBSECTION_PAGE_BITS = "configuration/target-page-bits"
CONFIG_SUBSECTION_CAPS = "configuration/capabilities"
CONFIG_SUBSECTION_UUID = "configuration/uuid"
CAP_X_IGNORE_SHARED = "x-ignore-shared"
CAP_MAPPED_RAM = "mapped-ram"

FileHeader = Struct("magic" / Const(QEMU_VM_FILE_MAGIC), "version" / Int32ub)

# After the type byte and be32 section_id of SECTION_START / SECTION_FULL.
SectionStartTail = Struct(
    "idstr" / PascalString(Int8ub, "latin-1"),
    "instance_id" / Int32ub,
    "version_id" / Int32ub,
)

SectionFooter = Struct("marker" / Const(QEMU_VM_SECTION_FOOTER, Int8ub), "section_id" / Int32ub)


def flag_names(flags: int) -> str:
    """'ZERO|CONTINUE' for a flag word; unknown bits as hex."""
    names, rest = [], flags
    for bit, name in RAM_FLAG_NAMES.items():
        if flags & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"
