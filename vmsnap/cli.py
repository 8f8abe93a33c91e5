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


@analyze.command("mrc")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "lackey", "text", "csv", "u64", "oracleGeneral"]),
              help="Trace format (auto: by name, then by content).")
@click.option("--page-size", default="4K", show_default=True, help="Page size: 4K, 2M, or bytes.")
@click.option("--values", type=click.Choice(["address", "page"]), default=None,
              help="Numbers in text/CSV/u64/oracleGeneral traces are byte addresses or page numbers "
                   "[default: page for oracleGeneral, address otherwise].")
@click.option("--column", default=None, help="CSV column: 1-based number or header name [default: 1].")
@click.option("--delimiter", default=",", show_default=True, help="CSV delimiter.")
@click.option("--lackey-ops", default="ILSM", show_default=True,
              help="Lackey record kinds to keep (I fetch, L load, S store, M modify).")
@click.option("--method", default="exact", show_default=True,
              type=click.Choice(["exact", "shards", "shards-fixed-size", "untraced"]))
@click.option("--rate", default=0.01, show_default=True, type=float,
              help="Sampling rate for shards and untraced.")
@click.option("--max-pages", default=8192, show_default=True, type=int,
              help="Tracked sampled pages for shards-fixed-size.")
@click.option("--period", "periods", multiple=True, type=int,
              help="Untraced period after a trap, in --period-unit units (repeatable) "
                   "[default: 0, 1000, 10000, 100000, 1000000].")
@click.option("--period-unit", type=click.Choice(["accesses", "time"]), default="accesses", show_default=True,
              help="Untraced period in references, or in the trace's time units "
                   "(oracleGeneral clock_time, CSV --time-column).")
@click.option("--time-column", default=None, help="CSV column with timestamps (for --period-unit time).")
@click.option("--no-adjust", is_flag=True,
              help="shards/untraced: no SHARDS-adj step; divide by the references actually sampled.")
@click.option("--compare-exact", is_flag=True, help="Also compute the exact curve and report the error.")
@click.option("--points", default=100, show_default=True, type=int, help="Cache sizes reported per curve.")
@click.option("--sizes", default=None, help="Report these cache sizes instead: pages, or bytes with K/M/G.")
@click.option("--target-miss-ratio", type=float, default=None,
              help="Report the memory needed for this miss ratio.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout (schema in the man page).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout: one row per curve and cache size.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Write a PNG plot of the curves (needs the 'plot' extra).")
def mrc(trace, fmt, page_size, values, column, delimiter, lackey_ops, method, rate, max_pages,
        periods, period_unit, time_column, no_adjust, compare_exact, points, sizes, target_miss_ratio, as_json, as_csv, plot_path):
    """LRU miss-ratio curve of a memory-access TRACE (man vmsnap-analyze-mrc)."""
    from .analyze import mrc_output
    from .analyze.mrc import DEFAULT_PERIODS, MrcRequest, compute
    from .errors import UsageError
    from .traces import open_trace

    if as_json and as_csv:
        raise UsageError("--json and --csv exclude each other")
    if target_miss_ratio is not None and not 0 <= target_miss_ratio <= 1:
        raise UsageError("--target-miss-ratio must be between 0 and 1")
    psize = mrc_output.parse_bytes(page_size)
    size_list = mrc_output.parse_sizes(sizes, psize) if sizes else None
    tr = open_trace(trace, fmt=fmt, page_size=psize, column=column, values=values,
                    delimiter=delimiter, lackey_ops=lackey_ops, time_column=time_column)
    if period_unit == "time" and method != "untraced":
        raise UsageError("--period-unit time applies to --method untraced only")
    req = MrcRequest(method=method, rate=rate, max_pages=max_pages, periods=periods or DEFAULT_PERIODS,
                     period_unit=period_unit, compare_exact=compare_exact, adjust=not no_adjust)
    chunks = tr.timed() if period_unit == "time" else tr
    result = compute(chunks, psize, req, progress=_progress_bar("references"))
    grid = mrc_output.grid_for(result, points, size_list)
    doc = mrc_output.to_dict(result, tr, method, grid, target_miss_ratio)
    if plot_path:
        mrc_output.plot(result, doc, plot_path)
    if as_json:
        click.echo(mrc_output.to_json(doc))
    elif as_csv:
        click.echo(mrc_output.to_csv(doc), nl=False)
    else:
        click.echo(mrc_output.to_text(doc), nl=False)


def _progress_bar(unit: str):
    """A tqdm counter on stderr when stderr is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(unit=" " + unit, unit_scale=True, file=sys.stderr, leave=False)
    return bar.update


if __name__ == "__main__":  # pragma: no cover
    main()
