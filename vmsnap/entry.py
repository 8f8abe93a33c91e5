"""The `vmsnap` command's entry point: the CLI, with a Ctrl-C during its start handled too.

The console script imports this module, which imports nothing heavy, so that a
Ctrl-C while click and the CLI are still loading (the first ~0.1 s) exits 130
with one line, as a Ctrl-C at any later point does, not with a traceback.
"""

import sys


def run() -> None:
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write("vmsnap: error: interrupted\n")
        sys.exit(130)
    main()
