"""Progress reporting: a tqdm bar on stderr when it is a terminal, silence otherwise."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator


@contextlib.contextmanager
def progress_bar(total: int | None, desc: str, enabled: bool | None = None) -> Iterator[Callable[[int], None] | None]:
    """Yield an update(nbytes) callback, or None when no bar should be shown.

    enabled=None means: only when stderr is a terminal (never in pipes and CI logs).
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
              file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
        yield bar.update
