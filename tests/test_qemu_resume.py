"""End to end: save a running QEMU guest, throw QEMU and its memory away, resume it.

Boots the fixture guest (fixtures/qemu/make_capture.py: same kernel, initramfs
and QEMU command line), waits for its workload and a few ticks, runs
`vmsnap qemu save`, kills QEMU, deletes the memory file, runs
`vmsnap qemu restore`, starts a new QEMU with the arguments and QMP commands
that restore printed, resumes it, and checks that the guest's tick counter goes
on from exactly the next value after the last one printed before the save.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time

import pytest
from click.testing import CliRunner

from qemu_fixture import load_make_capture
from vmsnap.cli import main
from vmsnap.format.reader import Snapshot
from vmsnap.qemu.qmp import QMP

pytestmark = pytest.mark.slow
MEM_MIB = 128


def _connect(path: str, qemu: subprocess.Popen, timeout: float = 60) -> QMP:
    from vmsnap.errors import QemuError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return QMP(path)
        except QemuError:
            if qemu.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _ticks(serial_log: str) -> list[int]:
    import re

    with open(serial_log, "rb") as fh:
        return [int(t) for t in re.findall(rb"vmsnap-fixture: tick (\d+)\r?\n", fh.read())]


def _stop(qemu: subprocess.Popen) -> None:
    if qemu.poll() is None:
        qemu.kill()
    qemu.wait()


def _parse_instructions(text: str) -> tuple[list[str], list[str], list[dict]]:
    """(-object values, extra QEMU arguments, QMP commands) from `vmsnap qemu restore`'s output."""
    lines = text.splitlines()
    objects = [ln.strip().split(" ", 1)[1] for ln in lines if ln.startswith("  -object ")]
    args = shlex.split(lines[lines.index("plus:") + 1])
    start = lines.index("then send these QMP commands:") + 1
    commands = []
    for ln in lines[start:]:
        if not ln.startswith("  "):
            break
        commands.append(json.loads(ln))
    return objects, args, commands


def _ram_backend(cmd: list[str], mode: str) -> list[str]:
    """The fixture's command line; for "stream", guest RAM in anonymous memory (not file-backed)."""
    if mode == "stream":
        i = cmd.index("-object") + 1
        cmd[i] = f"memory-backend-ram,id=pc.ram,size={MEM_MIB}M"
    return cmd


@pytest.mark.parametrize("mode", ["file", "stream"])
def test_save_kill_restore_resume(tmp_path, mode):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86, "
                    "installed by .ci/run from .ci/apt-packages.txt)")
    mc = load_make_capture()
    try:
        vmlinuz, _ = mc.guest_kernel()
    except mc.CaptureError as exc:
        pytest.fail(f"could not prepare the guest: {exc}")
    accel = mc.accel_choice("auto")
    initrd = str(tmp_path / "initramfs.cpio")
    mc.build_initramfs(initrd)
    mem = str(tmp_path / "guest.mem")
    serial1, serial2 = str(tmp_path / "serial1.log"), str(tmp_path / "serial2.log")
    sock_dir = tempfile.mkdtemp(prefix="vmsnap-qmp-")  # sun_path is 108 bytes
    sock1, sock2 = os.path.join(sock_dir, "1.sock"), os.path.join(sock_dir, "2.sock")
    snap = str(tmp_path / "guest.vms")
    procs = []
    try:
        # 1. boot, wait for the workload and a few ticks
        cmd1 = _ram_backend(mc.qemu_command(accel, MEM_MIB, mem, vmlinuz, initrd, serial1, sock1), mode)
        q1 = subprocess.Popen(cmd1, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(q1)
        _connect(sock1, q1).close()
        mc.wait_for_workload(q1, serial1, ticks=3)

        # 2. save (the guest is left stopped, the default)
        result = CliRunner().invoke(main, ["qemu", "save", "--qmp", sock1, "-o", snap, "--json"])
        assert result.exit_code == 0, result.output
        saved = json.loads(result.output)
        assert saved["mode"] == mode and saved["runstate_after"] != "running"
        if mode == "file":
            assert saved["memory_backends"] == ["pc.ram"]
            assert 0 < saved["device_state_bytes"] < 4 << 20  # device state only: the RAM is not in the stream
        else:
            assert saved["memory_backends"] == [] and saved["ram_blocks"][0] == "pc.ram"
        time.sleep(1.5)  # a running guest would print another tick by now
        before = _ticks(serial1)
        assert before and before == list(range(before[0], before[-1] + 1)) and before[-1] >= 3
        with Snapshot(snap) as s:
            assert s.region("pc.ram").size == MEM_MIB << 20
            assert set(s.attachments) >= {"qemu.device-state", "qemu.json"}

        # 3. kill QEMU, delete its memory
        _stop(q1)
        if mode == "file":
            os.unlink(mem)
        assert not os.path.exists(mem)

        # 4. restore
        result = CliRunner().invoke(main, ["qemu", "restore", snap] + (["--mem-path", mem] if mode == "file" else []))
        assert result.exit_code == 0, result.output
        objects, args, commands = _parse_instructions(result.output)
        if mode == "file":
            assert os.path.getsize(mem) == MEM_MIB << 20
            assert os.stat(mem).st_blocks * 512 < os.path.getsize(mem)  # zero pages are holes
            # the printed backend is the one of the guest's command line, at the restored file
            assert cmd1[cmd1.index("-object") + 1] == \
                f"memory-backend-file,id=pc.ram,size={MEM_MIB}M,mem-path={mem},share=on"
            assert objects == [f"memory-backend-file,id=pc.ram,size={MEM_MIB << 20},mem-path={mem},share=on"]
        else:
            assert objects == [] and not os.path.exists(mem)

        # 5. a new QEMU with the printed arguments, the printed QMP commands, then cont
        cmd2 = _ram_backend(mc.qemu_command(accel, MEM_MIB, mem, vmlinuz, initrd, serial2, sock2), mode) + args
        q2 = subprocess.Popen(cmd2, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(q2)
        with _connect(sock2, q2) as qmp:
            for c in commands:
                qmp.execute(c["execute"], **c.get("arguments", {}))
            deadline = time.monotonic() + 120
            while (info := qmp.execute("query-migrate")).get("status") != "completed":
                assert info.get("status") not in ("failed", "cancelled"), info
                assert time.monotonic() < deadline, info
                time.sleep(0.1)
            assert qmp.execute("query-status")["running"] is False
            qmp.execute("cont")
            deadline = time.monotonic() + 120
            while len(_ticks(serial2)) < 3:
                assert q2.poll() is None, q2.stdout.read()
                assert time.monotonic() < deadline, open(serial2, "rb").read()[-500:]
                time.sleep(0.2)
            qmp.execute("quit")
        q2.wait(timeout=60)

        # 6. the counter continues: no reboot, no lost or repeated tick
        with open(serial2, "rb") as fh:
            text = fh.read()
        assert b"workload start" not in text and b"Linux version" not in text
        after = _ticks(serial2)
        assert after[0] == before[-1] + 1, (before, after)
        assert after == list(range(after[0], after[0] + len(after)))
    finally:
        for p in procs:
            _stop(p)
        shutil.rmtree(sock_dir, ignore_errors=True)
