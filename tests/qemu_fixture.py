"""Session fixture: a real QEMU guest capture (raw memory, ELF core, migration stream).

Import it into a test module with `from qemu_fixture import qemu_capture`.
The capture is made once by fixtures/qemu/make_capture.py and cached under
fixtures/cache/qemu/ across sessions. Tests using it are skipped only when
qemu-system-x86_64 is not installed; any other failure to make the capture
(no busybox-static, no kernel package reachable) fails the test loudly.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "fixtures", "qemu", "make_capture.py")


def load_make_capture():
    spec = importlib.util.spec_from_file_location("make_capture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def qemu_capture() -> dict:
    """The capture's meta.json as a dict, with absolute file paths under ["paths"]."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip(
            "qemu-system-x86_64 is not installed (Debian package qemu-system-x86, "
            "installed by .ci/run from .ci/apt-packages.txt)"
        )
    make_capture = load_make_capture()
    try:
        return make_capture.ensure_capture(log=lambda msg: None)
    except make_capture.CaptureError as exc:
        pytest.fail(f"could not make the QEMU capture: {exc}")
