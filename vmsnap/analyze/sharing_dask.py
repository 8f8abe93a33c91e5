"""The sharing analysis as Dask tasks: `vmsnap analyze sharing --scheduler local|tcp://HOST:PORT`.

The same map (scan_dump) and reduce (reduce_partition) functions as the local
engine, as a task graph: one map task per dump returns its counted records
split into P partitions; one reduce task per partition receives the p-th piece
of every map result; the client assembles the partition results. Every sum is
order-independent, so the result is identical to the local run.

Workers read the dumps by path: on a cluster, the paths must name the same
files on every worker (a shared filesystem). Map results live in worker memory
(Dask spills them to the worker's disk under memory pressure); raw digests are
spilled to the worker's temporary directory while a dump is read.
Needs the optional extra: pip install 'vmsnap[dask]'.
"""

from __future__ import annotations

import tempfile

from ..errors import UsageError, VmsnapError
from . import sharing as S

CONNECT_TIMEOUT = "10s"


def _map(path, index, fmt, page_size, partitions, jobs, buffer_bytes):
    scan, parts = S.scan_dump(path, index, fmt=fmt, page_size=page_size, partitions=partitions, jobs=jobs,
                              spill_dir=tempfile.gettempdir(), buffer_bytes=buffer_bytes)
    return (scan, *parts)


def _reduce(parts, n_dumps, top):
    return S.reduce_partition(list(parts), n_dumps, top)


def _client(scheduler: str, jobs: int):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--scheduler needs Dask: pip install 'vmsnap[dask]'") from None
    if scheduler == "local":
        # Threads in this process: the tasks are numpy/BLAKE3 work that releases the GIL.
        cluster = LocalCluster(n_workers=1, threads_per_worker=jobs, processes=False,
                               dashboard_address=None)
        return Client(cluster), cluster
    if not scheduler.startswith(("tcp://", "tls://", "inproc://", "ws://", "wss://")):
        raise UsageError(f"--scheduler must be 'local' or an address like tcp://HOST:PORT, got {scheduler!r}")
    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT), None
    except (OSError, TimeoutError) as exc:
        raise VmsnapError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None


def analyze_dask(paths: list[str], scheduler, *, fmt: str = "auto", page_size: int = 4096,
                 top: int = S.DEFAULT_TOP, jobs: int = 1, partitions: int = 16,
                 buffer_bytes: int = S.SPILL_BUFFER) -> dict:
    """Run the analysis on a Dask scheduler: 'local', an address, or a distributed.Client."""
    if "-" in paths:
        raise UsageError("stdin ('-') cannot be read by Dask workers; give a file")
    own = None
    if isinstance(scheduler, str):
        client, cluster = _client(scheduler, jobs)
        own = (client, cluster)
    else:
        client = scheduler
    try:
        import dask

        maps = [dask.delayed(_map, nout=partitions + 1, pure=False)(path, i, fmt, page_size, partitions, 1,
                                                                    buffer_bytes)
                for i, path in enumerate(paths)]
        reduces = [dask.delayed(_reduce, pure=False)([m[p + 1] for m in maps], len(paths), top)
                   for p in range(partitions)]
        scans, results = dask.compute([m[0] for m in maps], reduces, scheduler=client)
        return S.assemble(list(scans), list(results), page_size, top)
    finally:
        if own is not None:
            client, cluster = own
            client.close()
            if cluster is not None:
                cluster.close()
