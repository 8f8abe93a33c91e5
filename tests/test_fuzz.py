"""Every fuzz target in fuzz/ for a fixed budget: seed 1, a fixed number of runs.

A target exits 0 when no input raised anything but vmsnap's own errors or broke its
oracle; otherwise libFuzzer writes the input to the artifact directory, and the failure
names it (and shows it in hex) with the command that replays it. Long campaigns are
run by hand: python fuzz/fuzz_vms.py CORPUS_DIR -max_total_time=3600 (fuzz/harness.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs per target: about 10 s each on a 2-core machine, all six together about 65 s.
RUNS = {"vms": 10000, "elf": 25000, "lime": 30000, "qemu": 40000, "traces": 12000, "scans": 50000}
TIMEOUT = 600  # seconds for a whole target: ten times its budget
INPUT_TIMEOUT = 60  # seconds for one input: libFuzzer reports a slower one as a finding

pytestmark = pytest.mark.slow


def test_atheris_is_installed():
    """The test extra installs atheris: without it the fuzz tests fail, they are not skipped."""
    import atheris

    assert callable(atheris.Fuzz)


@pytest.mark.parametrize("target", sorted(RUNS))
def test_fuzz_target(target, tmp_path):
    script = os.path.join(ROOT, "fuzz", f"fuzz_{target}.py")
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    cmd = [sys.executable, script, "-seed=1", f"-runs={RUNS[target]}", f"-timeout={INPUT_TIMEOUT}",
           f"-artifact_prefix={artifacts}{os.sep}", str(corpus)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
                          env=dict(os.environ, PYTHONHASHSEED="0"))
    if proc.returncode != 0:
        found = sorted(artifacts.iterdir())
        inputs = "\n".join(f"{p} ({p.stat().st_size} bytes, hex):\n{p.read_bytes().hex()}" for p in found)
        replay = " ".join([sys.executable, script] + [str(p) for p in found])
        pytest.fail(f"fuzz_{target} exited {proc.returncode}\nreplay: {replay}\n{inputs or 'no input saved'}\n"
                    f"--- stdout (atheris prints the traceback there) ---\n{proc.stdout[-4000:]}\n"
                    f"--- stderr (end) ---\n{proc.stderr[-2000:]}", pytrace=False)
