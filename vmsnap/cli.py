"""Command-line interface: click options in, one library call, a formatted result out.

Every VmsnapError becomes one line on stderr and its documented exit code
(vmsnap/errors.py, man/vmsnap.1). Heavy modules are imported inside commands.
"""

from __future__ import annotations

import gc
import os
import sys

# OpenBLAS starts a spinning thread per core when numpy loads. vmsnap's matrix
# products are small and run on one thread, and the idle spinning cost 0.1-0.3 s
# of CPU in every save and restore. Set before numpy is imported; a user's own
# setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click  # noqa: E402

from . import __version__  # noqa: E402
from .atomic import os_error_message  # noqa: E402
from .errors import Interrupted, OutputError, Terminated, VmsnapError


class _TerminateSignal(KeyboardInterrupt):
    """Raised by the SIGTERM handler: unwinds like Ctrl-C, so temporary files are removed."""


_MAIN_PID = os.getpid()


def _on_sigterm(signum, frame):
    if os.getpid() != _MAIN_PID:  # a forked worker (analyze sharing): die as it would have
        import signal

        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise _TerminateSignal()


def _help_written(make_context):
    """make_context with --help and --version written to a full or failing stdout as one
    line and exit 6 (click prints them while it parses, and let the OSError through)."""
    def wrapped(self, info_name, args, parent=None, **extra):
        try:
            return make_context(self, info_name, args, parent=parent, **extra)
        except OSError as exc:
            _fail(OutputError(f"stdout: {os_error_message(exc)}"))
        except click.exceptions.Exit as done:  # --help or --version printed: click writes nothing to a closed stdout
            if done.exit_code == 0 and sys.stdout is None:
                _fail(OutputError("stdout: standard output is closed"))
            raise
    return wrapped


class VmsnapCommand(click.Command):
    make_context = _help_written(click.Command.make_context)


class VmsnapGroup(click.Group):
    """A click group that turns library errors and usage errors into one stderr line and an exit code."""

    command_class = VmsnapCommand

    @_help_written
    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:  # the group's own options (`vmsnap --bogus`)
            _usage_fail(exc)
        except KeyboardInterrupt:  # click would print "Aborted!" and exit 1
            _fail(Interrupted("interrupted"))

    def invoke(self, ctx):
        import signal
        import threading

        # only the main thread may set handlers (the CLI driven from a thread keeps the default)
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if on_main else None
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a command's options or arguments
            _usage_fail(exc, ctx)
        except VmsnapError as exc:
            _fail(exc)
        except _TerminateSignal:
            _fail(Terminated("terminated"))
        except KeyboardInterrupt:
            _fail(Interrupted("interrupted"))
        except MemoryError:
            # Readers bound what they allocate by what a valid file can need; this is left
            # for work too big for the machine.
            _fail(VmsnapError("out of memory"))
        except BrokenPipeError:
            # The reader of our stdout went away (`vmsnap cat ... | head`) where no write of ours
            # turned it into an OutputError: the same line and exit 6 as where one did.
            _quiet_broken_pipe()
            _fail(OutputError("broken pipe"))
        finally:
            if on_main:
                signal.signal(signal.SIGTERM, previous)
            # The interpreter's last collection at exit walks every live object: half a
            # second once numba is loaded. Frozen objects are skipped; the process is ending.
            gc.freeze()


def _fail(exc: VmsnapError) -> None:
    message = " ".join(str(exc).splitlines())  # one line, whatever a library's message held
    _say_error(f"vmsnap: error: {message}")
    sys.exit(exc.exit_code)


def _say_error(line: str) -> None:
    try:
        click.echo(line, err=True)
    except OSError:  # stderr full or gone: the exit code still tells
        pass


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def _usage_fail(exc: click.UsageError, group_ctx: click.Context | None = None) -> None:
    """click's usage error as one line, like every other error (click prints the usage too).

    The line names the command ("analyze mrc: ..."). An error found while a command's
    own context was being made carries none: the group's context says which command
    it was making."""
    if isinstance(exc, _NO_ARGS_IS_HELP):  # a bare `vmsnap` or `vmsnap qemu`: the help it asked for
        exc.show()
        sys.exit(exc.exit_code)
    names: list[str] = []
    ctx = exc.ctx or group_ctx
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    root = ctx.info_name if ctx is not None else "vmsnap"  # "vmsnap", or "python -m vmsnap"
    if exc.ctx is None and group_ctx is not None and group_ctx.invoked_subcommand:
        names.append(group_ctx.invoked_subcommand)
    where = " ".join(names) + ": " if names else ""
    _say_error(f"vmsnap: error: {where}{exc.format_message()} (see '{' '.join([root, *names])} --help')")
    sys.exit(exc.exit_code)


def _echo(text: str = "", nl: bool = True, err: bool = False) -> None:
    """click.echo, flushed, with a failed write (disk full, a reader gone) as an OutputError:
    one line and exit 6, not a traceback."""
    stream = sys.stderr if err else sys.stdout
    if stream is None:  # started with it closed (>&-)
        if err:
            return
        raise OutputError("stdout: standard output is closed")
    try:
        click.echo(text, nl=nl, err=err)
        stream.flush()
    except OSError as exc:
        if not err:
            _quiet_broken_pipe()  # nothing more goes there, not even at exit
        raise OutputError(f"{'stderr' if err else 'stdout'}: {os_error_message(exc)}") from None


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


class Size(click.ParamType):
    """A byte count: 4096, 0x1000, 4K, 32M, 2G (binary multiples; vmsnap.sizes)."""

    name = "size"

    def convert(self, value, param, ctx):
        from .errors import UsageError
        from .sizes import parse_size

        if isinstance(value, str) and value.strip().startswith("-"):
            self.fail(f"{value!r} is negative", param, ctx)
        try:
            return parse_size(value)
        except UsageError:
            self.fail(f"{value!r} is not a size (examples: 4096, 0x1000, 4K, 32M)", param, ctx)


SIZE = Size()


def _jobs_option(f):
    return click.option("-j", "--jobs", type=click.IntRange(1, 256), default=None,
                        help="Worker threads for compression, hashing and decoding [default: CPUs].")(f)


def _quiet_option(f=None, *, what: str = "No progress bar and no summary."):
    option = click.option("-q", "--quiet", is_flag=True, help=what)
    return option(f) if f is not None else option


def _json_option(f=None, *, beside_data: bool = False):
    """--json; beside_data: the command may write its data to stdout (-o -), and the JSON then goes to stderr."""
    where = "on stdout (on stderr with -o -)" if beside_data else "on stdout"
    option = click.option("--json", "as_json", is_flag=True, help=f"Print the result as JSON {where}.")
    return option(f) if f is not None else option


def _report(result: dict, as_json: bool, quiet: bool, text: str, to_stdout: bool = True) -> None:
    """Print the result; on stderr when stdout carries the command's data (-o -)."""
    if as_json:
        import json

        _echo(json.dumps(result, indent=2, sort_keys=True), err=not to_stdout)
    elif not quiet:
        _echo(text, err=not to_stdout)


def _progress(quiet: bool):
    return False if quiet else None  # None: a bar only when stderr is a terminal


@main.command()
@click.argument("input", metavar="INPUT")
@click.option("-o", "--output", required=True, metavar="OUT.vms", help="Snapshot to write ('-' for stdout).")
@click.option("--format", "fmt", default="auto", show_default=True, help="Input format (auto detects by magic).")
@click.option("--page-size", type=SIZE, default="4K", show_default=True, help="Page size, a power of two.")
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True, help="zstd level of data frames.")
@click.option("--frame-size", type=SIZE, default="16M", show_default=True,
              help="Stored page data per zstd frame (larger finds more redundancy; cat decodes one frame).")
@click.option("--slice-window", type=SIZE, default="1G", show_default=True,
              help="Recently stored data searched for copies at 512-byte offsets (0: off).")
@click.option("--long/--no-long", "long_matching", default=False, show_default=True,
              help="zstd long-distance matching within each frame.")
@click.option("--description", default=None, help="Source description stored in the header.")
@_jobs_option
@_quiet_option
@_json_option(beside_data=True)
def save(input, output, fmt, page_size, level, frame_size, slice_window, long_matching, description, jobs, quiet,
         as_json):
    """Save the memory image INPUT ('-' for stdin) as a .vms snapshot."""
    from .api import save as save_snapshot

    result = save_snapshot(input, output, format=fmt, page_size=page_size, level=level, frame_size=frame_size,
                           slice_window=slice_window, long_matching=long_matching, jobs=jobs,
                           description=description, progress=_progress(quiet))
    ratio = result["bytes_in"] / result["bytes_out"] if result["bytes_out"] else 0.0
    _report(result, as_json, quiet, f"saved {result['bytes_in']} bytes in {result['bytes_out']} bytes "
            f"({ratio:.1f}x) to {output}", to_stdout=output != "-")


@main.command()
@click.argument("snapshot", metavar="SNAP")
@click.option("-o", "--output", required=True, metavar="OUT", help="Image to write ('-' for stdout).")
@click.option("--region", default=None, help="Write only this region (raw: from offset 0).")
@click.option("--format", "fmt", type=click.Choice(["raw", "elf"]), default="raw", show_default=True,
              help="raw: flat guest-physical image; elf: ELF core, one PT_LOAD per region.")
@click.option("--sparse/--no-sparse", default=True, show_default=True,
              help="Leave zero runs as holes in a regular output file.")
@_jobs_option
@_quiet_option
@_json_option(beside_data=True)
def restore(snapshot, output, region, fmt, sparse, jobs, quiet, as_json):
    """Restore SNAP to OUT byte for byte; every digest is checked."""
    from .api import restore as restore_snapshot

    result = restore_snapshot(snapshot, output, region=region, format=fmt, sparse=sparse, jobs=jobs,
                              progress=_progress(quiet))
    _report(result, as_json, quiet, f"restored {result['bytes']} bytes to {output}",
            to_stdout=output != "-")


@main.command()
@click.argument("snapshot", metavar="SNAP")
@_json_option
def info(snapshot, as_json):
    """Show what SNAP holds: pages per class, bytes per class, regions, digests."""
    from .api import info as snapshot_info
    from .report import format_info

    result = snapshot_info(snapshot)
    _report(result, as_json, False, format_info(result))


@main.command()
@click.argument("snapshot", metavar="SNAP")
@_jobs_option
@_quiet_option
@_json_option
def verify(snapshot, jobs, quiet, as_json):
    """Check every digest in SNAP without writing anything."""
    from .api import verify as verify_snapshot

    result = verify_snapshot(snapshot, jobs=jobs, progress=_progress(quiet))
    _report(result, as_json, quiet, f"{snapshot}: OK, {result['image_bytes']} bytes, "
            f"image digest {result['image_digest']}")


@main.command()
@click.argument("snapshot", metavar="SNAP")
@click.option("--offset", type=SIZE, required=True, help="Guest-physical address (or offset in --region).")
@click.option("--length", type=SIZE, required=True, help="Bytes to extract.")
@click.option("--region", default=None, help="Address within this region instead of guest-physical.")
@click.option("-o", "--output", default="-", show_default=True, help="Where to write the bytes.")
def cat(snapshot, offset, length, region, output):
    """Extract a byte range from SNAP without restoring the rest."""
    from .api import cat as cat_range

    cat_range(snapshot, offset, length, region, output=output)


@main.command()
@click.option("--workdir", default=None, help="Where to write the demo files [default: a temporary directory].")
@click.option("--keep", is_flag=True, help="Keep the demo files.")
def demo(workdir, keep):
    """Save, inspect, restore and verify the shipped sample memory image."""
    from .demo import run_demo

    run_demo(workdir, keep, echo=_echo)


@main.group(cls=VmsnapGroup)
def analyze() -> None:
    """Offline analyses of memory dumps and access traces."""


@analyze.command("hotcold")
@click.argument("scans", nargs=-1, required=True)
@click.option("-f", "--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "series", "idle", "damon", "dumps"]),
              help="Scan input format (auto: directory = idle, one file by magic, several = dumps).")
@click.option("--page-size", type=SIZE, default=None,
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
@click.option("--json", "as_json", is_flag=True,
              help="Print the JSON summary on stdout (stderr when a file goes to stdout).")
@click.option("--csv", "as_csv", is_flag=True,
              help="Print one CSV row per period on stdout (stderr when a file goes to stdout).")
@click.option("-o", "--out", "levels_out", metavar="FILE", help="Write the per-page levels file.")
@click.option("--heatmap", metavar="PNG", help="Write an address x time heatmap (needs matplotlib).")
@click.option("--heatmap-bins", default=256, show_default=True, type=click.IntRange(1, 65536),
              help="Address rows of the heatmap.")
@click.option("--plot", metavar="PNG", help="Write a class-over-time plot (needs matplotlib).")
@click.option("--save-series", metavar="FILE",
              help="Also write the input's accessed bitmaps as a vmsnap scan series file.")
@_quiet_option
def hotcold_cmd(scans, fmt, page_size, n_levels, demote_after, promote_by, damon_target,
                damon_min_accesses, as_json, as_csv, levels_out, heatmap, heatmap_bins, plot,
                save_series, quiet):
    """Hot/cold page classes from a scan series (bitmaps, DAMON records or dumps)."""
    from .analyze import hotcold as hc
    from .api import run_hotcold
    from .errors import UsageError

    if as_json and as_csv:
        raise UsageError("--json and --csv cannot be used together")
    res = run_hotcold(scans, format=fmt, page_size=page_size, levels=n_levels, demote_after=demote_after,
                      promote_by=promote_by, damon_target=damon_target, damon_min_accesses=damon_min_accesses,
                      levels_out=levels_out, heatmap=heatmap, heatmap_bins=heatmap_bins, plot=plot,
                      save_series=save_series, progress=_progress(quiet))
    # a file written to stdout (-o -, --heatmap -, ...) keeps it: the report goes to stderr
    err = "-" in (levels_out, heatmap, plot, save_series)
    if as_json:
        import json

        _echo(json.dumps(hc.summary(res), indent=2), err=err)
    elif as_csv:
        _echo(hc.csv_text(res), nl=False, err=err)
    elif not quiet:
        _echo(hc.text_report(res), nl=False, err=err)
@analyze.command("mrc")
@click.argument("trace")
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
@click.option("--json", "as_json", is_flag=True,
              help="JSON on stdout (stderr with --plot -; schema in the man page).")
@click.option("--csv", "as_csv", is_flag=True,
              help="CSV on stdout (stderr with --plot -): one row per curve and cache size.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Write a PNG plot of the curves (needs the 'plot' extra).")
@_quiet_option(what="No progress counter (the report is still printed).")
def mrc(trace, fmt, page_size, values, column, delimiter, lackey_ops, method, rate, max_pages,
        periods, period_unit, time_column, no_adjust, compare_exact, points, sizes, target_miss_ratio, as_json, as_csv,
        plot_path, quiet):
    """LRU miss-ratio curve of a memory-access TRACE (man vmsnap-analyze-mrc)."""
    from .analyze import mrc_output
    from .api import analyze_mrc
    from .errors import UsageError

    if as_json and as_csv:
        raise UsageError("--json and --csv cannot be used together")
    doc = analyze_mrc(trace, format=fmt, page_size=page_size, values=values, column=column, delimiter=delimiter,
                      lackey_ops=lackey_ops, time_column=time_column, method=method, rate=rate, max_pages=max_pages,
                      periods=periods, period_unit=period_unit, adjust=not no_adjust, compare_exact=compare_exact,
                      points=points, sizes=sizes, target_miss_ratio=target_miss_ratio, plot=plot_path,
                      progress=_progress(quiet))
    err = plot_path == "-"  # the PNG keeps stdout: the report goes to stderr
    if as_json:
        _echo(mrc_output.to_json(doc), err=err)
    elif as_csv:
        _echo(mrc_output.to_csv(doc), nl=False, err=err)
    else:
        _echo(mrc_output.to_text(doc), nl=False, err=err)


@analyze.command()
@click.argument("dumps", nargs=-1, required=True, metavar="DUMP...")
@click.option("--format", "fmt", default="auto", show_default=True,
              help="Input format of every DUMP (auto detects each by magic).")
@click.option("--page-size", type=SIZE, default="4K", show_default=True, help="Page size, a power of two.")
@click.option("--top", type=click.IntRange(0, 100000), default=10, show_default=True,
              help="How many of the most shared contents to list.")
@click.option("--partitions", type=click.IntRange(1, 4096), default=None,
              help="Digest partitions, a power of two [default: from the total input size].")
@click.option("--temp-dir", default=None, metavar="DIR", help="Where digest partitions are spilled [default: $TMPDIR].")
@click.option("--scheduler", default=None, metavar="local|tcp://HOST:PORT",
              help="Run as Dask tasks: 'local' (an in-process cluster) or a scheduler address; needs vmsnap[dask].")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=None,
              help="Worker threads for classifying, hashing and joining partitions [default: CPUs].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print one CSV row per dump and per fleet total on stdout.")
def sharing(dumps, fmt, page_size, top, partitions, temp_dir, scheduler, jobs, quiet, as_json, as_csv):
    """How much page sharing would save within each DUMP and across all of them."""
    from .errors import UsageError

    if as_json and as_csv:
        raise UsageError("--json and --csv cannot be used together")
    from .api import analyze_sharing

    result = analyze_sharing(dumps, format=fmt, page_size=page_size, top=top, jobs=jobs, partitions=partitions,
                             temp_dir=temp_dir, scheduler=scheduler, progress=_progress(quiet))
    if as_csv:
        from .analyze.sharing_report import format_csv

        _echo(format_csv(result))
    else:
        from .analyze.sharing_report import format_text

        _report(result, as_json, False, format_text(result) if not as_json else "")


@main.group(cls=VmsnapGroup)
def qemu() -> None:
    """Save a running QEMU guest (device state and memory) and resume it later."""


@qemu.command("save")
@click.option("--qmp", "qmp_socket", required=True, metavar="SOCKET", help="QEMU's QMP unix socket.")
@click.option("-o", "--output", required=True, metavar="OUT.vms", help="Snapshot to write ('-' for stdout).")
@click.option("--mode", type=click.Choice(["auto", "file", "stream"]), default="auto", show_default=True,
              help="file: RAM from the shared memory-backend-file, device state by migration; stream: the full "
                   "migration stream; auto: file when the guest has one.")
@click.option("--resume/--no-resume", default=False, show_default=True,
              help="Resume the guest after the save (if it was running), or leave it stopped.")
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True, help="zstd level.")
@click.option("--frame-size", type=SIZE, default="16M", show_default=True, help="Stored page data per zstd frame.")
@click.option("--timeout", type=click.FloatRange(1), default=600, show_default=True,
              help="Seconds to wait for QEMU's migration to complete.")
@_jobs_option
@_quiet_option
@_json_option(beside_data=True)
def qemu_save(qmp_socket, output, mode, resume, level, frame_size, timeout, jobs, quiet, as_json):
    """Stop the guest behind the QMP SOCKET and save it to OUT.vms."""
    from .qemu.snapshot import save as qemu_save_guest

    result = qemu_save_guest(qmp_socket, output, mode=mode, resume=resume, level=level, frame_size=frame_size, jobs=jobs,
                             timeout=timeout, progress=_progress(quiet))
    _report(result, as_json, quiet,
            f"saved {', '.join(result['memory_backends'] or result['ram_blocks'])} ({result['bytes_in']} bytes) and "
            f"{result['device_state_bytes']} bytes of device state in {result['bytes_out']} bytes to {output}; "
            f"guest {result['runstate_after']}", to_stdout=output != "-")


@qemu.command("restore")
@click.argument("snapshot", metavar="SNAP")
@click.option("--mem-path", "mem_paths", multiple=True, metavar="PATH|ID=PATH",
              help="Memory file to write (ID=PATH for each backend when the guest had several); "
                   "needed for a file-mode save.")
@click.option("--state-path", default=None, metavar="PATH",
              help="Device-state file [default: MEM.devstate; stream mode: SNAP with .mig for .vms].")
@click.option("--sparse/--no-sparse", default=True, show_default=True, help="Leave zero runs as holes.")
@_jobs_option
@_quiet_option(what="No progress bar (how to start QEMU is still printed).")
@_json_option
def qemu_restore(snapshot, mem_paths, state_path, sparse, jobs, quiet, as_json):
    """Write SNAP's memory and device state back and print how to start QEMU on them."""
    from .qemu.snapshot import format_restore, restore as qemu_restore_guest

    result = qemu_restore_guest(snapshot, list(mem_paths), state_path=state_path, sparse=sparse, jobs=jobs,
                                progress=_progress(quiet))
    if as_json:
        _report(result, True, quiet, "")
    else:
        _echo(format_restore(result))


@qemu.command("device-state")
@click.argument("snapshot", metavar="SNAP")
@click.option("-o", "--output", default="-", show_default=True, metavar="FILE",
              help="Where to write the migration stream ('-' for stdout).")
def qemu_device_state(snapshot, output):
    """Write SNAP's saved device state (a QEMU migration stream), e.g. for -incoming exec:."""
    from .qemu.snapshot import device_state

    device_state(snapshot, output)


if __name__ == "__main__":  # pragma: no cover  (last: every command is registered by now)
    main()
