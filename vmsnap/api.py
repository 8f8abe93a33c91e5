"""The Python API; each function is one CLI command (vmsnap save, restore, verify, ...)."""

from __future__ import annotations

from .atomic import atomic_output, os_error_message
from .errors import FormatError, OutputError, OutputWriteError, UsageError
from .format.reader import OutputCheck, RegionInfo, Snapshot
from .format.defaults import DEFAULT_FRAME_SIZE, DEFAULT_LEVEL, DEFAULT_SLICE_WINDOW, default_jobs
from .output import ImageWriter
from .progress import progress_bar
from .sizes import parse_size
from .streams import MAX_FILE_OFFSET, is_regular_file
from .sources import open_source

_ZEROS = bytes(1 << 20)


def save(input: str, output: str, *, format: str = "auto", page_size: int | str = 4096, level: int = DEFAULT_LEVEL,
         frame_size: int | str = DEFAULT_FRAME_SIZE, jobs: int | None = None, description: str | None = None,
         slice_window: int | str = DEFAULT_SLICE_WINDOW, long_matching: bool = False,
         progress: bool | None = False) -> dict:
    """Save the memory image `input` ('-' for stdin) as the snapshot `output` ('-' for stdout).

    Sizes are bytes, or strings as the CLI takes them ("4K", "16M", "0x1000").
    slice_window: bytes of recently stored data searched for copies at 512-byte
    offsets (0: none); long_matching: zstd long-distance matching within frames.
    """
    from .format.writer import SnapshotWriter

    page_size = parse_size(page_size, "page_size")
    frame_size = parse_size(frame_size, "frame_size")
    slice_window = parse_size(slice_window, "slice_window")

    with open_source(input, format) as source:
        attachments = source.attachments()  # a .vms saved again keeps its QEMU device state
        with progress_bar(source.size_hint, "save", progress) as update:
            with atomic_output(output, source=input) as out:
                writer = SnapshotWriter(out, page_size=page_size, level=level, frame_size=frame_size,
                                        jobs=jobs, slice_window=slice_window, long_matching=long_matching,
                                        source=description if description is not None else source.description,
                                        attachments=bool(attachments))
                try:
                    for name in attachments:
                        writer.add_attachment(name, source.read_attachment(name))
                    for region, chunks in source.regions():
                        writer.add_region(region.name, region.base, chunks, update)
                    summary = writer.close()
                except BaseException:
                    writer.abort()
                    raise
    summary.update(input=input, output=output, format=source.format_name)
    return summary


def open_snapshot(path: str) -> Snapshot:
    """Open a .vms snapshot for reading (header, index and their digests are checked)."""
    return Snapshot(path)


def info(path: str) -> dict:
    """What the snapshot holds, as `vmsnap info --json` prints it (vmsnap-info(1))."""
    with Snapshot(path) as snap:
        return snap.stats()


def cat(path: str, offset: int | str, length: int | str, region: str | None = None, output: str | None = None):
    """Bytes [offset, offset+length) of the image (guest-physical, or within `region`).

    Returns them, or with `output` ('-' for stdout) streams them there and returns None.
    """
    offset, length = parse_size(offset, "offset"), parse_size(length, "length")
    with Snapshot(path) as snap:
        # An extraction checks the blocks around the range, not only the frames it reads.
        if output is None:
            return snap.read(offset, length, region, check_blocks=True)
        if output != "-" and length > MAX_FILE_OFFSET:  # a file cannot hold it: say so before writing
            raise UsageError(f"--length {length} is past the largest offset a file can have")
        pieces = snap.iter_range(offset, length, region, check_blocks=True)
        first = next(pieces, None)  # range errors surface before the output is created
        with atomic_output(output, source=path) as out:
            # as restore writes: a regular file gets holes for zero runs and O_DIRECT writes
            positioned = output != "-" and is_regular_file(out)
            writer = ImageWriter(out, positioned=positioned)
            sink = _Sink(writer, sparse=positioned, placement={})
            try:
                for piece in _chain(first, pieces):
                    sink.put(piece)
                sink.finish(length)
            except BaseException:
                writer.abandon()
                raise
        return None


def _chain(first, rest):
    if first is not None:
        yield first
    yield from rest


def verify(path: str, *, jobs: int | None = None, progress: bool | None = False) -> dict:
    """Check every digest of the snapshot without writing anything."""
    with Snapshot(path) as snap:
        total = sum(r.size for r in snap.regions)
        with progress_bar(total, "verify", progress) as update:
            snap.produce(lambda region, piece: None, progress=update, jobs=jobs or default_jobs())
        for name in snap.attachments:
            for _ in snap.read_attachment(name):
                pass
        return {"file": path, "ok": True, "image_bytes": total, "image_digest": snap.image_digest.hex(),
                "frames": len(snap.frames), "regions": len(snap.regions), "attachments": len(snap.attachments)}


RESTORE_FORMATS = ("raw", "elf")


def restore(path: str, output: str, *, region: str | None = None, format: str = "raw", sparse: bool = True,
            jobs: int | None = None, progress: bool | None = False) -> dict:
    """Restore the image to `output` ('-' for stdout), byte for byte, every digest checked.

    format="raw": the image laid out flat by guest-physical address (a raw dump:
    the original file; gaps are zeros, holes in a sparse regular file); with `region`, only that region, from
    offset 0. format="elf": an ELF64 core file with one PT_LOAD per region
    (p_paddr = its base), as QEMU's dump-guest-memory writes (see vmsnap.elfcore).
    """
    if format not in RESTORE_FORMATS:
        raise UsageError(f"unknown output format {format!r} (choose from {', '.join(RESTORE_FORMATS)})")
    with Snapshot(path) as snap:
        regions = [snap.region(region)] if region is not None else sorted(snap.regions, key=lambda r: r.base)
        header = b""
        if format == "elf":
            from .elfcore import layout

            core = layout(regions, snap.page_size)
            placement = {r.name: off for r, off in zip(regions, core.offsets)}
            header, total = core.headers, core.size
        else:
            placement = {r.name: (r.base if region is None else 0) for r in regions}
            _check_overlap(regions, path)
            total = max((placement[r.name] + r.size for r in regions), default=0)
            _check_fits_a_file(regions, placement, path)
        with progress_bar(sum(r.size for r in regions), "restore", progress) as update:
            with atomic_output(output, source=path) as out:
                positioned = output != "-" and is_regular_file(out)
                # The blocks are checked in the bytes that are written, a buffer at a time.
                check = OutputCheck(snap, [(r, placement[r.name]) for r in regions])
                writer = ImageWriter(out, positioned=positioned, inspect=check)
                sink = _Sink(writer, sparse=sparse and positioned, placement=placement)
                try:
                    sink.write_header(header)
                    snap.produce(sink, regions, progress=update, jobs=jobs or default_jobs(), checked=False)
                    sink.finish(total)
                except BaseException:
                    writer.abandon()
                    raise
        return {"file": path, "output": output, "format": format, "bytes": total,
                "regions": [r.name for r in regions], "sparse": sink.sparse,
                "image_digest": snap.image_digest.hex()}


def _check_fits_a_file(regions: list[RegionInfo], placement: dict[str, int], path: str) -> None:
    """A flat image whose region lies past the largest file offset cannot be written."""
    for r in regions:
        if placement[r.name] + r.size > MAX_FILE_OFFSET:
            raise UsageError(f"{path}: region {r.name!r} at {r.base:#x} ends past the largest offset a file can "
                             "have; restore it with --region, or the whole image with --format elf")


def _check_overlap(regions: list[RegionInfo], path: str) -> None:
    for a, b in zip(regions, regions[1:]):
        if b.base < a.end:
            raise FormatError(f"{path}: regions {a.name!r} and {b.name!r} overlap; restore one with --region")


class _Sink:
    """Places pieces at each region's offset (restore), or one after another (cat); zero
    runs become holes when sparse."""

    def __init__(self, writer: ImageWriter, *, sparse: bool, placement: dict[str, int]):
        self.writer, self.sparse, self.placement = writer, sparse, placement
        self.pos = 0
        self.region: str | None = None

    def __call__(self, region: RegionInfo, piece) -> None:
        if region.name != self.region:
            self.region = region.name
            gap = self.placement[region.name] - self.pos
            if gap < 0:
                raise OutputError("internal error: regions out of order")
            self._zeros(gap)
        self.put(piece)

    def put(self, piece: int | memoryview) -> None:
        """The next piece where the last one ended: bytes, or a run of that many zeros."""
        if isinstance(piece, int):
            self._zeros(piece)
        else:
            self._write(piece)

    def write_header(self, data: bytes) -> None:
        self._write(data)

    def _write(self, data) -> None:
        try:
            self.writer.write(self.pos, data)
        except OSError as exc:
            raise OutputWriteError(os_error_message(exc)) from None
        self.pos += len(data)

    def _zeros(self, n: int) -> None:
        """n zero bytes: a hole in a sparse file, written out otherwise."""
        if self.sparse:
            self.pos += n
            return
        while n > 0:
            k = min(n, len(_ZEROS))
            self._write(memoryview(_ZEROS)[:k])
            n -= k

    def finish(self, total: int) -> None:
        self._zeros(total - self.pos)  # holes at the end; an empty region at the end of an ELF core
        try:
            self.writer.close(total)
        except OSError as exc:
            raise OutputWriteError(os_error_message(exc)) from None


# ---------------------------------------------------------------- the analyses (vmsnap analyze ...)


def analyze_sharing(dumps, *, format: str = "auto", page_size: int | str = 4096, top: int = 10, jobs: int | None = None,
                    partitions: int | None = None, temp_dir: str | None = None, scheduler: str | None = None,
                    progress: bool | None = False) -> dict:
    """Page sharing within each dump and across all of them, as `vmsnap analyze sharing --json`
    prints it (vmsnap-analyze-sharing(1))."""
    from .analyze.sharing import analyze

    return analyze(list(dumps), fmt=format, page_size=parse_size(page_size, "page_size"), top=top, jobs=jobs,
                   partitions=partitions, temp_dir=temp_dir, scheduler=scheduler, progress=progress)


def analyze_hotcold(scans, *, format: str = "auto", page_size: int | str | None = None, levels: int = 4,
                    demote_after: int = 1, promote_by: int | None = None, damon_target: int = 0,
                    damon_min_accesses: int = 1, levels_out: str | None = None, heatmap: str | None = None,
                    heatmap_bins: int = 256, plot: str | None = None, save_series: str | None = None,
                    progress: bool | None = False) -> dict:
    """Hot/cold page classes from a scan series, as `vmsnap analyze hotcold --json` prints them
    (vmsnap-analyze-hotcold(1)); the files asked for (levels, heatmap, plot, series) are written."""
    options = dict(locals())  # the same names as run_hotcold's
    from .analyze.hotcold import summary

    return summary(run_hotcold(**options))


def run_hotcold(scans, *, format: str = "auto", page_size: int | str | None = None, levels: int = 4,
                demote_after: int = 1, promote_by: int | None = None, damon_target: int = 0,
                damon_min_accesses: int = 1, levels_out: str | None = None, heatmap: str | None = None,
                heatmap_bins: int = 256, plot: str | None = None, save_series: str | None = None,
                progress: bool | None = False):
    """analyze_hotcold's work, returning the whole HotColdResult (every period's row, the
    final levels) that the command's text and CSV reports are made from."""
    from .analyze import hotcold as hc

    if page_size is not None:
        page_size = parse_size(page_size, "page_size")
    return hc.hotcold(list(scans), format, hc.HotColdParams(levels, demote_after, promote_by), page_size=page_size,
                      damon_target=damon_target, damon_min_accesses=damon_min_accesses, levels_out=levels_out,
                      heatmap=heatmap, plot=plot, heatmap_bins=heatmap_bins, series_out=save_series,
                      progress=progress)


def analyze_mrc(trace: str, *, format: str = "auto", page_size: int | str = 4096, values: str | None = None,
                column: str | None = None, delimiter: str = ",", lackey_ops: str = "ILSM",
                time_column: str | None = None, method: str = "exact", rate: float = 0.01, max_pages: int = 8192,
                periods=(), period_unit: str = "accesses", adjust: bool = True, compare_exact: bool = False,
                points: int = 100, sizes=None, target_miss_ratio: float | None = None, plot: str | None = None,
                progress: bool | None = False) -> dict:
    """LRU miss-ratio curves of a memory-access trace, as `vmsnap analyze mrc --json` prints them
    (vmsnap-analyze-mrc(1)). page_size and sizes take numbers or "4K"-style strings."""
    from .analyze import mrc_output
    from .analyze.mrc import DEFAULT_PERIODS, MrcRequest, compute
    from .traces import open_trace

    if target_miss_ratio is not None and not 0 <= target_miss_ratio <= 1:
        raise UsageError("--target-miss-ratio must be between 0 and 1")
    if period_unit == "time" and method != "untraced":
        raise UsageError("--period-unit time applies to --method untraced only")
    if plot:
        from .analyze.plotting import require_matplotlib
        from .atomic import refuse_outputs_over_inputs

        refuse_outputs_over_inputs({"--plot": plot}, [trace])
        require_matplotlib()  # fail before a long run, not after it
    psize = parse_size(page_size, "--page-size")
    if sizes is not None:  # "100,64M", or numbers of pages
        sizes = mrc_output.parse_sizes(sizes if isinstance(sizes, str) else ",".join(map(str, sizes)), psize)
    tr = open_trace(trace, fmt=format, page_size=psize, column=column, values=values,
                    delimiter=delimiter, lackey_ops=lackey_ops, time_column=time_column)
    req = MrcRequest(method=method, rate=rate, max_pages=max_pages, periods=tuple(periods) or DEFAULT_PERIODS,
                     period_unit=period_unit, compare_exact=compare_exact, adjust=adjust)
    with progress_bar(None, "mrc", progress, unit="references") as update:
        result = compute(tr.timed() if period_unit == "time" else tr, psize, req, progress=update)
    doc = mrc_output.to_dict(result, tr, method, mrc_output.grid_for(result, points, sizes), target_miss_ratio)
    if plot:
        mrc_output.plot(result, doc, plot)
    return doc
