"""Progress reporting: a tqdm bar on stderr when it is a terminal, silence otherwise."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator


@contextlib.contextmanager
def progress_bar(total: int | None, desc: str, enabled: bool | None = None,
                 unit: str = "B") -> Iterator[Callable[[int], None] | None]:
    """Yield an update(n) callback, or None when no bar should be shown.

    unit "B" counts bytes in binary multiples; any other unit is a plain counter.

    enabled=None means: only when stderr is a terminal (never in pipes and CI logs).
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit if unit == "B" else f" {unit}", unit_scale=True,
              unit_divisor=1024 if unit == "B" else 1000, file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
        yield bar.update
