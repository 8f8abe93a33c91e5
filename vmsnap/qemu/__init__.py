"""Save a running QEMU guest (device state + memory) into one .vms, and restore it.

``vmsnap.qemu.save(qmp_socket, output)`` is ``vmsnap qemu save``;
``vmsnap.qemu.restore(snapshot, mem_paths)`` is ``vmsnap qemu restore``;
``vmsnap.qemu.device_state(snapshot, output)`` is ``vmsnap qemu device-state``.
The QMP client is vmsnap.qemu.qmp; the logic is vmsnap.qemu.snapshot.
"""

from __future__ import annotations


def save(*args, **kwargs):
    from .snapshot import save as _save

    return _save(*args, **kwargs)


def restore(*args, **kwargs):
    from .snapshot import restore as _restore

    return _restore(*args, **kwargs)


def device_state(*args, **kwargs):
    from .snapshot import device_state as _device_state

    return _device_state(*args, **kwargs)


__all__ = ["save", "restore", "device_state"]
