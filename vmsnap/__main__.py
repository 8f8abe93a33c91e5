"""`python -m vmsnap` runs the command-line interface."""

from .cli import main

main()
