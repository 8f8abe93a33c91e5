"""vmsnap: save, restore and analyse virtual-machine memory snapshots.

The API mirrors the CLI: ``vmsnap.save`` is ``vmsnap save``, ``vmsnap.open``
returns a reader like ``vmsnap info`` and ``vmsnap cat`` use, and so on.
Heavy modules (numpy, zstandard) load on first use, so importing vmsnap is cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "save": ("vmsnap.api", "save"),
    "restore": ("vmsnap.api", "restore"),
    "verify": ("vmsnap.api", "verify"),
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


__all__ = ["save", "restore", "verify", "open", "Snapshot", "qemu", "__version__"]
