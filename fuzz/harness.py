"""What the fuzz targets share: instrumented imports, seeding, scratch files, the oracle's helpers.

Every target is a script run by atheris (libFuzzer's engine for Python):

    python fuzz/fuzz_vms.py [CORPUS_DIR ...] [libFuzzer flags: -runs=N -seed=1 -max_total_time=S ...]
    python fuzz/fuzz_vms.py CRASH_FILE ...     # replay inputs

Its seeds are built at start-up with vmsnap's own writers and the tests' builders
(tests/source_builders.py) and written into the first corpus directory given, or into a
new temporary one (its name is printed: pass it again to go on from there). An input is
a finding when it raises anything but vmsnap's own errors (vmsnap.errors.VmsnapError,
each documented with an exit code) or breaks the target's oracle (an AssertionError).
"""

from __future__ import annotations

import glob
import operator
import os
import shutil
import sys
import tempfile
from typing import Callable

import atheris
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # source_builders: ELF, LiME and QEMU files by construction

# Bytes a target reads from one input's regions at most: a 40-byte QEMU stream may declare
# a 16 TiB RAM block, whose zeros are legitimate but not worth reading in a fuzz run.
READ_LIMIT = 16 << 20
FAILED = object()  # what attempt() returns for a vmsnap error

_scratch: str | None = None


def instrumented():
    """A context manager: vmsnap modules imported inside it are instrumented for coverage."""
    return atheris.instrument_imports(include=["vmsnap"])


def scratch() -> str:
    """This process's directory for input and output files, on tmpfs where there is one
    (a restore fsyncs its output). libFuzzer ends the process without Python's atexit, so
    the directories of earlier runs whose process is gone are removed here instead."""
    global _scratch
    if _scratch is None:
        shm = "/dev/shm"
        base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()
        for old in glob.glob(os.path.join(base, "vmsnap-fuzz-*")):
            pid = old.rsplit("-", 1)[1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        _scratch = os.path.join(base, f"vmsnap-fuzz-{os.getpid()}")
        os.makedirs(_scratch, exist_ok=True)
    return _scratch


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write(name: str, data: bytes) -> str:
    """data as the file `name` in the scratch directory; returns its path."""
    path = os.path.join(scratch(), name)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


# ---------------------------------------------------------------- the oracle's helpers


def attempt(fn: Callable, *args):
    """fn(*args), or FAILED when it raises one of vmsnap's errors; any other error propagates."""
    from vmsnap.errors import VmsnapError

    try:
        return fn(*args)
    except VmsnapError:
        return FAILED


def drain(open_source: Callable, *args) -> list[tuple[str, int, bytes]] | None:
    """(name, base, bytes) of each region of the vmsnap Source open_source(*args), each
    checked to hold the bytes its size declares; None past READ_LIMIT bytes."""
    out, total = [], 0
    with open_source(*args) as source:
        for region, chunks in source.regions():
            got = bytearray()
            for chunk in chunks:
                total += len(chunk)
                if total > READ_LIMIT:
                    return None
                got += chunk
            if region.size is not None and len(got) != region.size:
                raise AssertionError(f"region {region.name!r} declares {region.size} bytes, yielded {len(got)}")
            out.append((region.name, region.base, bytes(got)))
    return out


def read_both_ways(open_source: Callable, data: bytes, name: str) -> None:
    """Read `data` with open_source(path, fh) from a regular file (fh None) and from a pipe
    (fh a non-seekable stream of it). Either way it may fail, with a vmsnap error only;
    when both ways read it all, they yield the same regions and bytes."""
    from source_builders import Pipe

    path = write(name, data)
    from_file, from_pipe = (attempt(drain, open_source, path, fh) for fh in (None, Pipe(data)))
    if from_file not in (FAILED, None) and from_pipe not in (FAILED, None) and from_file != from_pipe:
        raise AssertionError("read from a file and from a pipe, the same bytes give different regions")


# ---------------------------------------------------------------- running atheris

_OPS = (operator.lt, operator.le, operator.eq, operator.ne, operator.gt, operator.ge)
_native_cmp: list[Callable] = []


def _trace_cmp_but_arrays(a, b, op, counter, is_const):
    """atheris._trace_cmp, except for numpy arrays: atheris 3.0 keeps a reference to every
    comparison result that is not a bool, and vmsnap compares whole tables (7 KB lost an
    execution, libFuzzer's 2 GiB limit within minutes)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return _OPS[op](a, b)
    return _native_cmp[0](a, b, op, counter, is_const)


def _arrays_untraced(test_one_input: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """test_one_input with _trace_cmp_but_arrays in place: instrumented code looks
    atheris._trace_cmp up at each comparison, and atheris.Fuzz() sets it as it starts."""
    def run(data: bytes) -> None:
        native = getattr(atheris, "_trace_cmp", None)  # a private name: an atheris without it runs as it is
        if native is not None and native is not _trace_cmp_but_arrays:
            _native_cmp[:] = [native]
            atheris._trace_cmp = _trace_cmp_but_arrays
        test_one_input(data)

    return run


def main(test_one_input: Callable[[bytes], None], seeds: Callable[[], dict[str, bytes]],
         custom_mutator: Callable[[bytes, int, int], bytes] | None = None) -> None:
    """Run test_one_input under atheris with sys.argv's libFuzzer arguments; seeds() gives
    the seed inputs by name, written into the first corpus directory unless files are replayed."""
    args = sys.argv[1:]
    paths = [a for a in args if not a.startswith("-")]
    if not paths:
        paths = [tempfile.mkdtemp(prefix=f"vmsnap-{os.path.basename(sys.argv[0])[:-3]}-corpus-")]
        args.append(paths[0])
        print(f"corpus: {paths[0]}", file=sys.stderr)
    inputs = seeds()  # built even to replay files: an oracle may compare with them
    if os.path.isdir(paths[0]):
        for name, data in inputs.items():
            with open(os.path.join(paths[0], f"seed-{name}"), "wb") as fh:
                fh.write(data)
    atheris.Setup([sys.argv[0]] + args, _arrays_untraced(test_one_input), custom_mutator=custom_mutator)
    atheris.Fuzz()
