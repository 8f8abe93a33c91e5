"""matplotlib for the analyses' PNG plots: an optional dependency (the ``plot`` extra)."""

from __future__ import annotations

from ..errors import UsageError


def require_matplotlib():
    """pyplot with a headless backend, or a UsageError saying how to get it.

    Commands call it before their work starts, so a missing matplotlib is reported
    at once and not after a long run."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("plots need matplotlib: pip install 'vmsnap[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
