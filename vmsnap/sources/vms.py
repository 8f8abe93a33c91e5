"""vmsnap's own snapshots as input: every analysis (and `vmsnap save`) reads .vms too.

Each stored region becomes one region with its name and base. Bytes come from the
digest-checked reader, every 1 MiB block checked against its stored digest as it
streams by; zero records are yielded as views of a shared zero buffer
(base.zero_chunks), so a consumer that tells them apart never touches them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from .base import Region, Source, input_name, zero_chunks

MAGIC = b"\x89VMSNAP\n"


class VmsSource(Source):
    format_name = "vms"

    def __init__(self, path: str, jobs: int = 2):
        from ..format.reader import Snapshot

        self.path = path
        self.jobs = max(1, jobs)
        self._snap = Snapshot(path)
        super().__init__(f"vms:{input_name(path)}")

    @property
    def page_size(self) -> int:
        return self._snap.page_size

    def attachments(self) -> list[str]:
        return list(self._snap.attachments)

    def read_attachment(self, name: str) -> Iterator[bytes]:
        return self._snap.read_attachment(name)  # checked against its digest as it is read

    @property
    def size_hint(self) -> int:
        return sum(r.size for r in self._snap.regions)

    @property
    def layout(self) -> list[Region]:
        """The regions, without their bytes: known from the index once the file is open."""
        return [Region(r.name, r.base, r.size) for r in self._snap.regions]

    def regions(self) -> Iterator[tuple[Region, Iterator[bytes]]]:
        from ..format.reader import CanonicalPages, _Prefetcher

        snap = self._snap
        canonical = CanonicalPages(snap, [snap.region_records(r) for r in snap.regions])
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="vmsnap-vms") as pool:
            snap._prefetch = _Prefetcher(snap, pool, snap.regions, ahead=self.jobs)
            try:
                for r in snap.regions:
                    yield Region(r.name, r.base, r.size), self._pieces(r, canonical)
            finally:
                canonical.close()
                snap._prefetch = None

    def _pieces(self, region, canonical) -> Iterator[bytes]:
        from ..format.reader import _BlockChecker

        checker = _BlockChecker(self._snap, region)
        for piece in self._snap.segments(region, canonical=canonical):
            checker.feed(piece)
            if isinstance(piece, int):
                yield from zero_chunks(piece)
            else:
                yield piece
        checker.finish()

    def close(self) -> None:
        self._snap.close()
