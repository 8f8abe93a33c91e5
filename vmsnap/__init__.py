"""vmsnap: save, restore and analyse virtual-machine memory snapshots.

The API mirrors the CLI: ``vmsnap.save`` is ``vmsnap save``, ``vmsnap.info``
``vmsnap info --json``, ``vmsnap.analyze_mrc`` ``vmsnap analyze mrc --json``, and so
on; ``vmsnap.open`` returns the reader they use (pages, ranges, stats), and
``vmsnap.qemu`` holds ``vmsnap qemu``'s save, restore and device_state.
``vmsnap demo`` alone has no counterpart.
Heavy modules (numpy, zstandard) load on first use, so importing vmsnap is cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "save": ("vmsnap.api", "save"),
    "restore": ("vmsnap.api", "restore"),
    "verify": ("vmsnap.api", "verify"),
    "info": ("vmsnap.api", "info"),
    "cat": ("vmsnap.api", "cat"),
    "analyze_sharing": ("vmsnap.api", "analyze_sharing"),
    "analyze_hotcold": ("vmsnap.api", "analyze_hotcold"),
    "analyze_mrc": ("vmsnap.api", "analyze_mrc"),
    "open": ("vmsnap.api", "open_snapshot"),
    "Snapshot": ("vmsnap.format.reader", "Snapshot"),
}


def __getattr__(name: str):
    if name == "qemu":  # vmsnap.qemu.save / restore: a subpackage, loaded on first use
        import importlib

        return importlib.import_module("vmsnap.qemu")
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'vmsnap' has no attribute {name!r}")


__all__ = ["save", "restore", "verify", "info", "cat", "analyze_sharing", "analyze_hotcold", "analyze_mrc", "open",
           "Snapshot", "qemu", "__version__"]
