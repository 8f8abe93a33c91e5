"""Time vmsnap as an installed package runs: with its bytecode compiled.

pip compiles a package's modules when it installs them. An editable install
compiles them on first import, unless PYTHONDONTWRITEBYTECODE is set (as on the
developers' machines): then every timed run compiled the changed modules again,
about 30 ms a start (hyperfine, imports of a save: 163 ms against 133 ms).
"""

from __future__ import annotations

import compileall
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_vmsnap() -> None:
    """Write the bytecode of every vmsnap module that lacks it or whose source changed."""
    if not compileall.compile_dir(os.path.join(ROOT, "vmsnap"), quiet=1):
        raise SystemExit("bench: vmsnap's modules do not compile")
