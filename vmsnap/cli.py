"""Command-line interface: click options in, one library call, a formatted result out.

Every VmsnapError becomes one line on stderr and its documented exit code
(vmsnap/errors.py, man/vmsnap.1). Heavy modules are imported inside commands.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import Interrupted, OutputError, VmsnapError


class VmsnapGroup(click.Group):
    """A click group that turns library errors into one stderr line and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VmsnapError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            _fail(Interrupted("interrupted"))
        except BrokenPipeError:
            # The reader of our stdout went away (`vmsnap cat ... | head`): not an error of ours.
            _quiet_broken_pipe()
            sys.exit(OutputError.exit_code)


def _fail(exc: VmsnapError) -> None:
    click.echo(f"vmsnap: error: {exc}", err=True)
    sys.exit(exc.exit_code)


def _quiet_broken_pipe() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


@click.group(cls=VmsnapGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vmsnap")
def main() -> None:
    """Save, restore and analyse virtual-machine memory snapshots."""


@main.group(cls=VmsnapGroup)
def analyze() -> None:
    """Offline analyses of memory dumps and access traces."""


if __name__ == "__main__":  # pragma: no cover
    main()
