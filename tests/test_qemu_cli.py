"""`vmsnap qemu save/restore` against a scripted QMP server: the protocol, the errors,
and that no output file is left behind (the real QEMU run is test_qemu_resume.py)."""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import threading

import pytest
from click.testing import CliRunner

from conftest import build_image
from source_builders import simple_stream
from vmsnap import api
from vmsnap.cli import main
from vmsnap.errors import FormatError, QemuError, UsageError
from vmsnap.format.reader import Snapshot
from vmsnap.qemu import snapshot as Q

MEM = build_image([("random", 1), ("zero",), ("zero",), ("copy", 0), ("fill", 3)] * 8)
STATE = b"QEVM\x00\x00\x00\x03" + bytes(range(256)) * 100  # stands in for the migration stream
BIOS = build_image([("random", 9), ("zero",), ("fill", 0xFF)])


def full_stream() -> tuple[bytes, int]:
    """A full migration stream of MEM (pc.ram) and BIOS (pc.bios): pages in a PART section."""
    pages = []
    for name, data in (("pc.ram", MEM), ("pc.bios", BIOS)):
        for off in range(0, len(data), 4096):
            page = data[off:off + 4096]
            pages.append(("page", name, off, page) if any(page) else ("zero", name, off, 0))
    b, ram_end = simple_stream([("pc.ram", len(MEM)), ("pc.bios", len(BIOS))], pages)
    return b.bytes(), ram_end


class FakeQemu:
    """A QMP server on a unix socket answering like QEMU 7.2 for one guest."""

    def __init__(self, sock_path, mem_path, backend="memory-backend-file", share=True, migrate_status="completed",
                 refuse=(), silent=()):
        self.path, self.mem_path = sock_path, mem_path
        self.refuse, self.silent = refuse, silent  # commands answered with an error; where QEMU hangs
        self.hung = False
        self.backend, self.share, self.migrate_status = backend, share, migrate_status
        self.log: list[dict] = []
        self.running = True
        self.caps = {"x-ignore-shared": False, "xbzrle": False}
        self.migrated = self.cancelled = False
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(sock_path)
        self.srv.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.srv.accept()
        except OSError:  # closed before anyone connected (a save refused before it reached QEMU)
            return
        with conn:
            conn.sendall(b'{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 22}}, '
                         b'"capabilities": ["oob"]}}\n')
            buf = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    self.log.append({k: v for k, v in msg.items() if k != "id"})
                    self.hung = self.hung or msg["execute"] in self.silent
                    if self.hung:  # from that command on, nothing is answered
                        continue
                    answer = self._answer(msg)
                    if "id" in msg:  # QEMU echoes a command's id in its answer
                        answer["id"] = msg["id"]
                    reply = json.dumps(answer).encode() + b"\n"
                    if msg["execute"] == "stop":  # an event before the reply, as QEMU sends it
                        reply = b'{"event": "STOP", "timestamp": {"seconds": 0, "microseconds": 0}}\n' + reply
                    conn.sendall(reply)

    def _answer(self, msg):
        cmd, args = msg["execute"], msg.get("arguments", {})
        if cmd in self.refuse:
            return {"error": {"class": "GenericError", "desc": f"{cmd} refused"}}
        if cmd == "query-memdev":
            return {"return": [{"id": "pc.ram", "size": len(MEM), "share": self.share}]}
        if cmd == "qom-list":
            return {"return": [{"name": "type", "type": "string"}, {"name": "pc.ram", "type": f"child<{self.backend}>"}]}
        if cmd == "qom-get":
            return {"return": {"share": self.share, "mem-path": self.mem_path, "size": len(MEM)}[args["property"]]}
        if cmd == "query-migrate-capabilities":
            return {"return": [{"capability": k, "state": v} for k, v in self.caps.items()]}
        if cmd in ("migrate-set-capabilities", "migrate-set-parameters") and self._migrating():
            return {"error": {"class": "GenericError", "desc": "There's a migration process in progress"}}
        if cmd == "migrate_cancel":
            self.cancelled = True
            return {"return": {}}
        if cmd == "migrate-set-capabilities":
            for c in args["capabilities"]:
                self.caps[c["capability"]] = c["state"]
            return {"return": {}}
        if cmd == "query-migrate-parameters":
            return {"return": {"max-bandwidth": 134217728}}
        if cmd == "query-migrate":
            if not self.migrated:
                return {"return": {}}
            if self.migrate_status == "failed":
                return {"return": {"status": "failed", "error-desc": "Unable to write to command: Broken pipe"}}
            if self.migrate_status == "active":  # never completes: only a cancel ends it
                return {"return": {"status": "cancelled" if self.cancelled else "active"}}
            return {"return": {"status": "completed", "total-time": 5}}
        if cmd == "migrate":
            m = re.fullmatch(r"exec:cat > (\S+)", args["uri"])
            assert m and not self.running
            with open(m.group(1), "wb") as fh:  # device state only, or the whole guest
                fh.write(STATE if self.caps["x-ignore-shared"] else full_stream()[0])
            self.migrated = True
            return {"return": {}}
        if cmd == "query-status":
            return {"return": {"status": "running" if self.running else "postmigrate", "running": self.running}}
        if cmd == "stop":
            self.running = False
            return {"return": {}}
        if cmd == "cont":
            self.running = True
            return {"return": {}}
        if cmd in ("qmp_capabilities", "migrate-set-parameters"):
            return {"return": {}}
        return {"error": {"class": "CommandNotFound", "desc": f"The command {cmd} has not been found"}}

    def _migrating(self):
        return self.migrated and self.migrate_status == "active" and not self.cancelled

    def commands(self):
        return [m["execute"] for m in self.log]

    def close(self):
        self.srv.close()


@pytest.fixture
def qmp_dir():
    d = tempfile.mkdtemp(prefix="vmsnap-fakeqmp-")  # short: sun_path is 108 bytes
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def guest(tmp_path, qmp_dir):
    mem = tmp_path / "guest.mem"
    mem.write_bytes(MEM)
    fake = FakeQemu(os.path.join(qmp_dir, "q.sock"), str(mem))
    yield fake
    fake.close()


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_save_then_restore_round_trip(guest, tmp_path):
    out = tmp_path / "g.vms"
    result = run("qemu", "save", "--qmp", guest.path, "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["device_state_bytes"] == len(STATE) and summary["runstate_after"] == "postmigrate"
    cmds = guest.commands()
    assert cmds.index("stop") < cmds.index("migrate") and "cont" not in cmds
    assert guest.caps["x-ignore-shared"] is False  # set back after the migration
    with Snapshot(str(out)) as snap:
        assert [r.name for r in snap.regions] == ["pc.ram"]
        assert b"".join(snap.read_attachment("qemu.device-state")) == STATE
    mem2 = tmp_path / "restored.mem"
    result = run("qemu", "restore", str(out), "--mem-path", str(mem2))
    assert result.exit_code == 0, result.output
    assert mem2.read_bytes() == MEM
    state = tmp_path / "restored.mem.devstate"
    assert state.read_bytes() == STATE
    assert "-S -incoming defer" in result.output
    assert f'"uri": "exec:cat {state}"' in result.output
    assert '"capability": "x-ignore-shared", "state": true' in result.output
    result = CliRunner().invoke(main, ["qemu", "device-state", str(out)])
    assert result.exit_code == 0 and result.stdout_bytes == STATE


def test_resume_option_continues_the_guest(guest, tmp_path):
    result = run("qemu", "save", "--qmp", guest.path, "-o", str(tmp_path / "g.vms"), "--resume", "-q")
    assert result.exit_code == 0, result.output
    assert guest.commands()[-2:] == ["cont", "query-status"] and guest.running


def test_missing_socket(tmp_path):
    out = tmp_path / "g.vms"
    result = run("qemu", "save", "--qmp", str(tmp_path / "nope.sock"), "-o", str(out))
    assert result.exit_code == QemuError.exit_code == 7
    assert result.output.strip() == f"vmsnap: error: {tmp_path / 'nope.sock'}: no such QMP socket"
    assert os.listdir(tmp_path) == []


def test_refused_socket(tmp_path, qmp_dir):
    path = os.path.join(qmp_dir, "dead.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # bound, nobody listening: ECONNREFUSED
    result = run("qemu", "save", "--qmp", path, "-o", str(tmp_path / "g.vms"))
    assert result.exit_code == 7 and "connection refused" in result.output
    assert len(result.output.strip().splitlines()) == 1 and os.listdir(tmp_path) == []


@pytest.mark.parametrize("backend,share", [("memory-backend-ram", False), ("memory-backend-file", False),
                                           ("memory-backend-memfd", True)])
def test_guest_not_file_backed_and_shared(tmp_path, qmp_dir, backend, share):
    fake = FakeQemu(os.path.join(qmp_dir, "q.sock"), "/nonexistent", backend=backend, share=share)
    out = tmp_path / "g.vms"
    result = run("qemu", "save", "--qmp", fake.path, "-o", str(out), "--mode", "file")
    fake.close()
    assert result.exit_code == 7, result.output
    assert "not in a shared memory-backend-file" in result.output and "Traceback" not in result.output
    assert "stop" not in fake.commands()  # checked before the guest is touched
    assert os.listdir(tmp_path) == []


def test_migration_failure_leaves_no_file(tmp_path, qmp_dir):
    mem = tmp_path / "guest.mem"
    mem.write_bytes(MEM)
    fake = FakeQemu(os.path.join(qmp_dir, "q.sock"), str(mem), migrate_status="failed")
    result = run("qemu", "save", "--qmp", fake.path, "-o", str(tmp_path / "g.vms"))
    fake.close()
    assert result.exit_code == 7
    assert result.output.strip() == "vmsnap: error: migration failed: Unable to write to command: Broken pipe"
    assert sorted(os.listdir(tmp_path)) == ["guest.mem"]
    assert fake.caps["x-ignore-shared"] is False and not fake.running  # left stopped: the default


def test_restore_errors(tmp_path, guest):
    raw = tmp_path / "plain.raw"
    raw.write_bytes(MEM)
    plain = tmp_path / "plain.vms"
    api.save(str(raw), str(plain))
    result = run("qemu", "restore", str(plain), "--mem-path", str(tmp_path / "m"))
    assert result.exit_code == FormatError.exit_code and "not a `vmsnap qemu save` snapshot" in result.output
    snap = tmp_path / "g.vms"
    Q.save(guest.path, str(snap))
    result = run("qemu", "restore", str(snap), "--mem-path", "a", "--mem-path", "b")
    assert result.exit_code == UsageError.exit_code and "more than one --mem-path" in result.output
    assert not os.path.exists("a") and not (tmp_path / "m").exists()


def test_outputs_that_are_inputs_are_refused(tmp_path, guest):
    # --state-path SNAP once replaced the snapshot with its own device state.
    snap = tmp_path / "g.vms"
    Q.save(guest.path, str(snap))
    kept = snap.read_bytes()
    for args in (["--mem-path", str(tmp_path / "m"), "--state-path", str(snap)],
                 ["--mem-path", str(snap)],
                 ["--mem-path", str(tmp_path / "m"), "--state-path", str(tmp_path / "m")]):
        result = run("qemu", "restore", str(snap), *args)
        assert result.exit_code == UsageError.exit_code, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and "another name" in result.output
        assert snap.read_bytes() == kept
        assert sorted(os.listdir(tmp_path)) == ["g.vms", "guest.mem"]


def test_a_save_onto_the_guests_own_memory_file_is_refused(tmp_path, guest):
    mem = tmp_path / "guest.mem"
    result = run("qemu", "save", "--qmp", guest.path, "-o", str(mem))
    assert result.exit_code == UsageError.exit_code and "memory of backend pc.ram" in result.output, result.output
    assert mem.read_bytes() == MEM and "stop" not in guest.commands()  # refused before the guest is touched
    assert os.listdir(tmp_path) == ["guest.mem"]


def test_stream_mode_round_trip(tmp_path, qmp_dir):
    """A guest without a shared memory-backend-file: the full stream's RAM becomes the
    regions, and restore rebuilds a stream that reads back to the same RAM and ends
    with the same device state."""
    from vmsnap.sources.qemu_migration import QemuMigrationSource

    fake = FakeQemu(os.path.join(qmp_dir, "q.sock"), "/nonexistent", backend="memory-backend-ram", share=False)
    snap = tmp_path / "g.vms"
    result = run("qemu", "save", "--qmp", fake.path, "-o", str(snap), "--json")
    fake.close()
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["mode"] == "stream" and summary["ram_blocks"] == ["pc.ram", "pc.bios"]
    assert {"execute": "migrate-set-capabilities",
            "arguments": {"capabilities": [{"capability": "x-ignore-shared", "state": False}]}} in fake.log
    original, ram_end = full_stream()
    with Snapshot(str(snap)) as s:
        assert s.read(0, len(MEM), "pc.ram") == MEM
        assert s.attachment("qemu.device-state").size == len(original) - ram_end
    assert summary["device_state_bytes"] == len(original) - ram_end  # not the whole stream, as it once said
    result = run("qemu", "restore", str(snap), "--mem-path", str(tmp_path / "m"))
    assert result.exit_code == UsageError.exit_code and "no --mem-path" in result.output
    result = run("qemu", "restore", str(snap))
    assert result.exit_code == 0, result.output
    rebuilt = tmp_path / "g.mig"
    assert f'"uri": "exec:cat {rebuilt}"' in result.output and "x-ignore-shared" not in result.output
    data = rebuilt.read_bytes()
    assert data.endswith(original[ram_end:])
    with QemuMigrationSource(str(rebuilt)) as src:
        ram = {r.name: b"".join(bytes(c) for c in chunks) for r, chunks in src.regions()}
        assert ram == {"pc.ram": MEM, "pc.bios": BIOS}
        assert src.device_state_offset == len(data) - (len(original) - ram_end)
        assert data[:src.ram_setup_end_offset] == original[:src.ram_setup_end_offset]
    streamed = CliRunner().invoke(main, ["qemu", "device-state", str(snap)])
    assert streamed.exit_code == 0 and streamed.stdout_bytes == data
    # From stdin there is no name to put the stream beside: it was written to ./-.mig.
    import subprocess
    import sys

    def from_stdin(*args):
        with open(snap, "rb") as fh:
            return subprocess.run([sys.executable, "-m", "vmsnap.cli", "qemu", "restore", "-", *args], stdin=fh,
                                  cwd=tmp_path, capture_output=True, text=True)

    p = from_stdin()
    assert p.returncode == UsageError.exit_code and "give --state-path" in p.stderr, p.stderr
    assert not (tmp_path / "-.mig").exists()
    p = from_stdin("--state-path", "in.mig")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "in.mig").read_bytes() == data
    # Saved again (another level), it is still a QEMU snapshot: it lost its device state once.
    assert run("save", str(snap), "-o", str(tmp_path / "again.vms"), "--level", "9").exit_code == 0
    assert run("qemu", "restore", str(tmp_path / "again.vms")).exit_code == 0
    assert (tmp_path / "again.mig").read_bytes() == data


def test_a_stream_snapshot_saved_again_with_smaller_pages_still_restores(tmp_path, qmp_dir, monkeypatch):
    # With 1 KiB pages a run of zeros can end inside a 4 KiB QEMU page: qemu restore said
    # "not a whole number of pages" (or wrote part of a stream to stdout first).
    import sys

    from vmsnap.sources.qemu_migration import QemuMigrationSource

    page = os.urandom(1024) + bytes(3072)
    monkeypatch.setattr(sys.modules[__name__], "MEM", (page + os.urandom(4096) + bytes(4096) + bytes(1024) +
                                                        os.urandom(3072)) * 4)
    fake = FakeQemu(os.path.join(qmp_dir, "q.sock"), "/nonexistent", backend="memory-backend-ram", share=False)
    snap = tmp_path / "g.vms"
    result = run("qemu", "save", "--qmp", fake.path, "-o", str(snap))
    fake.close()
    assert result.exit_code == 0, result.output
    for size in ("512", "1K", "2K"):
        again = tmp_path / f"again-{size}.vms"
        assert run("save", str(snap), "-o", str(again), "--page-size", size).exit_code == 0
        result = run("qemu", "restore", str(again), "--state-path", str(tmp_path / f"{size}.mig"))
        assert result.exit_code == 0, result.output
        with QemuMigrationSource(str(tmp_path / f"{size}.mig")) as src:
            ram = {r.name: b"".join(bytes(c) for c in chunks) for r, chunks in src.regions()}
        assert ram == {"pc.ram": MEM, "pc.bios": BIOS}, size


@pytest.mark.parametrize("size", ["2K", "0", "2G"])
def test_a_bad_frame_size_is_refused_before_the_guest_is_touched(guest, tmp_path, size):
    # It was checked after the migration had stopped the guest; 0 became the default.
    result = run("qemu", "save", "--qmp", guest.path, "-o", str(tmp_path / "g.vms"), "--frame-size", size)
    assert result.exit_code == UsageError.exit_code and "frame size" in result.output, result.output
    assert "stop" not in guest.commands() and guest.running
    assert os.listdir(tmp_path) == ["guest.mem"]


def test_an_output_that_cannot_be_made_is_found_before_the_guest_is_touched(guest, tmp_path):
    # The guest was stopped and migrated first; QEMU then refused every later save of it.
    result = run("qemu", "save", "--qmp", guest.path, "-o", str(tmp_path / "nodir" / "g.vms"))
    assert result.exit_code == 6 and "cannot create" in result.output, result.output
    assert "stop" not in guest.commands() and "migrate" not in guest.commands() and guest.running


@pytest.mark.parametrize("stop", ["timeout", "ctrl-c"])
def test_a_migration_that_does_not_end_is_cancelled_and_the_guest_resumed(tmp_path, qmp_dir, monkeypatch, stop):
    # A Ctrl-C while QEMU migrated: the settings were put back while the migration still ran,
    # QEMU refused them, that refusal replaced the interrupt, and the guest stayed stopped.
    from vmsnap.qemu import snapshot

    mem = tmp_path / "guest.mem"
    mem.write_bytes(MEM)
    fake = FakeQemu(os.path.join(qmp_dir, "q.sock"), str(mem), migrate_status="active")
    if stop == "ctrl-c":
        def interrupted(qmp, timeout):
            qmp.execute("query-migrate")
            raise KeyboardInterrupt

        monkeypatch.setattr(snapshot, "_wait_migration", interrupted)
    result = run("qemu", "save", "--qmp", fake.path, "-o", str(tmp_path / "g.vms"), "--timeout", "1", "--resume")
    fake.close()
    assert (result.exit_code, result.output) == (
        (7, "vmsnap: error: migration did not complete in 1 s (status active)\n") if stop == "timeout"
        else (130, "vmsnap: error: interrupted\n"))
    cmds = fake.commands()
    assert "migrate_cancel" in cmds and cmds.index("migrate_cancel") < cmds.index("cont")
    assert fake.caps["x-ignore-shared"] is False and fake.running  # put back, and resumed
    assert sorted(os.listdir(tmp_path)) == ["guest.mem"]


def test_a_late_answer_is_not_taken_for_the_next_one(tmp_path, qmp_dir):
    # A Ctrl-C between a command and its answer left the answer unread: the next command got it.
    from vmsnap.qemu.qmp import QMP

    fake = FakeQemu(os.path.join(qmp_dir, "q.sock"), "/nonexistent")
    with QMP(fake.path) as qmp:
        qmp.sock.sendall(json.dumps({"execute": "query-memdev", "id": 0}).encode() + b"\n")  # never read
        assert qmp.execute("query-status") == {"status": "running", "running": True}
    fake.close()


def test_a_guest_that_does_not_resume_does_not_cost_the_snapshot(tmp_path, qmp_dir):
    # The resume ran inside the atomic output: its failure removed the finished snapshot.
    mem = tmp_path / "guest.mem"
    mem.write_bytes(MEM)
    fake = FakeQemu(os.path.join(qmp_dir, "q.sock"), str(mem), refuse=("cont",))
    out = tmp_path / "g.vms"
    result = run("qemu", "save", "--qmp", fake.path, "-o", str(out), "--resume")
    fake.close()
    assert (result.exit_code, result.output) == (
        7, f"vmsnap: error: {out}: saved, but the guest was not resumed: QMP cont failed: cont refused\n")
    with Snapshot(str(out)) as snap:
        assert snap.read(0, len(MEM)) == MEM


def test_a_qemu_that_stops_answering_costs_one_timeout(tmp_path, qmp_dir, monkeypatch):
    # The cleanup after the first timeout sent five more commands, each waiting out the timeout.
    import time

    from vmsnap.qemu import qmp as qmp_module

    monkeypatch.setattr(qmp_module.QMP.__init__, "__defaults__", (0.5,))
    mem = tmp_path / "guest.mem"
    mem.write_bytes(MEM)
    fake = FakeQemu(os.path.join(qmp_dir, "q.sock"), str(mem), silent=("migrate",))
    start = time.monotonic()
    result = run("qemu", "save", "--qmp", fake.path, "-o", str(tmp_path / "g.vms"), "--resume")
    took = time.monotonic() - start
    fake.close()
    assert (result.exit_code, result.output) == (7, f"vmsnap: error: {fake.path}: QMP did not answer in time\n")
    assert took < 1.4, took
    assert sorted(os.listdir(tmp_path)) == ["guest.mem"]
