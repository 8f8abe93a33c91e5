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


def _page_size(ctx, param, value):
    if value is None:
        return None
    units = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20}
    txt = value.strip().lower()
    num = txt.rstrip("kmib")
    unit = txt[len(num):]
    if not num.isdigit() or unit not in units:
        raise click.BadParameter(f"{value!r} is not a size like 4096, 4K or 2M")
    return int(num) * units[unit]


@analyze.command("hotcold")
@click.argument("scans", nargs=-1, required=True)
@click.option("-f", "--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "series", "idle", "damon", "dumps"]),
              help="Scan input format (auto: directory = idle, one file by magic, several = dumps).")
@click.option("--page-size", callback=_page_size, metavar="SIZE",
              help="Page size for idle, damon and dumps input (default 4K; series files carry theirs).")
@click.option("--levels", "n_levels", default=4, show_default=True, type=int,
              help="Number of activity levels, hottest to coldest (2..250).")
@click.option("--demote-after", default=1, show_default=True, type=int,
              help="Idle scans that cost a page one level.")
@click.option("--promote-by", type=int, default=None,
              help="Levels a page gains per accessed scan [default: --levels, straight to hottest].")
@click.option("--damon-target", default=0, show_default=True, type=int,
              help="Which record (target) of a damo record file to use.")
@click.option("--damon-min-accesses", default=1, show_default=True, type=int,
              help="nr_accesses (samples) a DAMON region needs to count as accessed.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON summary on stdout.")
@click.option("--csv", "as_csv", is_flag=True, help="Print one CSV row per period on stdout.")
@click.option("-o", "--out", "levels_out", metavar="FILE", help="Write the per-page levels file.")
@click.option("--heatmap", metavar="PNG", help="Write an address x time heatmap (needs matplotlib).")
@click.option("--heatmap-bins", default=256, show_default=True, type=click.IntRange(1, 65536),
              help="Address rows of the heatmap.")
@click.option("--plot", metavar="PNG", help="Write a class-over-time plot (needs matplotlib).")
@click.option("--save-series", metavar="FILE",
              help="Also write the input's accessed bitmaps as a vmsnap scan series file.")
def hotcold_cmd(scans, fmt, page_size, n_levels, demote_after, promote_by, damon_target,
                damon_min_accesses, as_json, as_csv, levels_out, heatmap, heatmap_bins, plot,
                save_series):
    """Hot/cold page classes from a scan series (bitmaps, DAMON records or dumps)."""
    from .analyze import hotcold as hc
    from .errors import UsageError

    if as_json and as_csv:
        raise UsageError("--json and --csv cannot be used together")
    res = hc.hotcold(
        list(scans), fmt, hc.HotColdParams(n_levels, demote_after, promote_by),
        page_size=page_size, damon_target=damon_target, damon_min_accesses=damon_min_accesses,
        levels_out=levels_out, heatmap=heatmap, plot=plot, heatmap_bins=heatmap_bins,
        series_out=save_series,
    )
    if as_json:
        import json

        click.echo(json.dumps(hc.summary(res), indent=2))
    elif as_csv:
        click.echo(hc.csv_text(res), nl=False)
    else:
        click.echo(hc.text_report(res), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
