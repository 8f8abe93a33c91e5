"""`vmsnap demo`: the main job on a shipped sample, narrated.

The sample is an 8 MiB guest memory image made by fixtures/genimage.py (seed 7):
free (zero) memory, kernel text, page cache with copied files, heap, page tables,
pattern pages and some incompressible data.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import tempfile
from importlib import resources
from typing import Callable

from .atomic import os_error_message
from .errors import OutputError, VmsnapError


def sample_path(directory: str) -> str:
    """Unpack the shipped sample image into `directory`; return its path."""
    import zstandard

    out = os.path.join(directory, "sample.raw")
    with resources.files("vmsnap").joinpath("data/sample.raw.zst").open("rb") as src, open(out, "wb") as dst:
        zstandard.ZstdDecompressor().copy_stream(src, dst)
    return out


def run_demo(workdir: str | None, keep: bool, echo: Callable[[str], None] = print) -> dict:
    from . import api
    from .report import format_info

    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="vmsnap-demo-")
            if not keep:
                stack.callback(shutil.rmtree, workdir, True)
        try:
            os.makedirs(workdir, exist_ok=True)
            raw = sample_path(workdir)
        except FileExistsError:
            raise OutputError(f"{workdir}: not a directory") from None
        except OSError as exc:
            raise OutputError(f"{workdir}: {os_error_message(exc)}") from None
        snap = os.path.join(workdir, "sample.vms")
        back = os.path.join(workdir, "restored.raw")
        echo(f"$ vmsnap save {raw} -o {snap}")
        saved = api.save(raw, snap)
        echo(f"saved {saved['bytes_in']} bytes in {saved['bytes_out']} bytes "
             f"({saved['bytes_in'] / saved['bytes_out']:.1f}x)\n")
        echo(f"$ vmsnap info {snap}")
        echo(format_info(api.info(snap)) + "\n")
        echo(f"$ vmsnap restore {snap} -o {back}")
        restored = api.restore(snap, back)
        echo(f"restored {restored['bytes']} bytes, every digest checked\n")
        echo(f"$ vmsnap verify {snap}")
        checked = api.verify(snap)
        echo(f"OK, image digest {checked['image_digest']}\n")
        if not filecmp.cmp(raw, back, shallow=False):
            raise VmsnapError("restored image differs from the sample")
        echo(f"restored image is byte-identical to {raw}")
        if keep:
            echo(f"files kept in {workdir}")
        return {"saved": saved, "restored": restored, "verified": checked, "workdir": workdir}
