#!/usr/bin/env python3
"""Assemble bench/RESULTS.md from the per-topic reports in bench/results/.

Each report is written by its bench script (see the command quoted in it); this
only puts them in one file, in a fixed order, under one heading each.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = [
    ("save.md", "Save and restore: vmsnap vs zstd --long (issue 2)", "bench/bench_save.py --size 1G --big 8G --runs 5"),
    ("memory.md", "Memory as the guest grows, 1 to 64 GiB (issue 2)", "bench/bench_memory.py --sizes 1G,8G,32G,64G"),
    ("memory-alternating.md", "Memory with a record per page (issue 2)",
     "bench/bench_memory.py --sizes 4G,16G --layout alternating --checkout DIR"),
    ("memory-many-refs.md", "Memory with a reference per page (issue 2)",
     "bench/bench_memory.py --sizes 8G --layout many-refs --checkout DIR"),
    ("floor.md", "The floor of a save and a restore: their essential work alone (issue 2)",
     "bench/floor.py --size 1G --runs 3"),
    ("restore-phases.md", "Where a restore's time goes (issue 2)",
     "bench/restore_phases.py bench/out/guest-1024M-seed1.vms --runs 9"),
    ("layouts.md", "Page layouts that cost a restore most per byte (issue 2)", "bench/bench_layouts.py --runs 3"),
    ("readers.md", "Input readers and QEMU's migration stream (issue 3)", "bench/bench_readers.py"),
    ("qemu.md", "A real QEMU guest: .vms vs QEMU's migration stream (issue 3)", "bench/bench_qemu.py"),
    ("sharing.md", "Sharing analysis (issue 4)", "bench/bench_sharing.py"),
    ("mrc.md", "Miss-ratio curves vs libCacheSim (issue 5)", "bench/bench_mrc.py"),
    ("hotcold.md", "Hot/cold classes (issue 5)", "bench/bench_hotcold.py"),
    ("hotcold-state.md", "Hot/cold state machine on long scan series (issue 5)",
     "bench/hotcold_state.py --runs 3 --checkout DIR"),
]


def main() -> None:
    parts = ["# Benchmark results\n",
             "Every figure here was measured on a 2-core machine shared with other work, with vmsnap and",
             "the peer tool run side by side in the same run; quote the ratios, not the absolute times.",
             "Each section is the report its script wrote; rerun the script to reproduce it.\n"]
    for name, title, cmd in ORDER:
        path = os.path.join(HERE, "results", name)
        if not os.path.exists(path):
            continue
        with open(path) as fh:
            body = fh.read().strip()
        lines = body.splitlines()
        if lines and lines[0].startswith("# "):  # the section gets our heading instead
            body = "\n".join(lines[1:]).strip()
        body = body.replace("\n## ", "\n### ")
        parts.append(f"## {title}\n\nScript: `{cmd}`.\n\n{body}\n")
    with open(os.path.join(HERE, "RESULTS.md"), "w") as fh:
        fh.write("\n".join(parts))


if __name__ == "__main__":
    main()
