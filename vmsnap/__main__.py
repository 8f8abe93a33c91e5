"""`python -m vmsnap` runs the command-line interface."""

from .entry import run

run()
