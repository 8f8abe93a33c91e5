"""Save a running QEMU guest into one .vms, and prepare its restore.

Two modes. "file" (a guest whose RAM is in shared memory-backend-file objects)
is described first; "stream" (any other guest) after it.

save: through QMP, the guest is stopped (`stop`) and migrated with the
`x-ignore-shared` capability to a temporary file, so the migration stream holds
the device state (CPU, devices, and any RAM block that is *not* shared) but not
the guest RAM that lives in shared memory-backend-file objects. That RAM is then
read from the backend files themselves, while the guest is still stopped. The
.vms holds one region per shared file backend (name = the memory-backend id,
base 0: the file's bytes, not a guest-physical layout) and two attachments:

    qemu.device-state   the migration stream, byte for byte
    qemu.json           what restore needs: QEMU version, memory backends
                        (id, size, mem-path at save time), capabilities

restore: each backend's region is written back (sparse, atomically) to the
given memory file, the device-state stream next to it, and the result says how
to start QEMU on them: the saved guest's command line with the backend at the
restored path, plus `-S -incoming defer`, then over QMP `migrate-set-capabilities`
x-ignore-shared (the destination must skip the shared RAM too, QEMU 7.2 has no
command-line switch for it) and `migrate-incoming "exec:cat STATE"`, then `cont`.

Stream mode: a full migration (RAM included) to a temporary file; its RAM blocks
become the regions (read by sources.qemu_migration), the stream's head (up to the
end of the 'ram' SECTION_START) and tail (after the 'ram' SECTION_END: device
state) become attachments, and restore rebuilds a complete stream with one
SECTION_END holding every page (write_stream), loaded with `migrate-incoming`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
import time

from ..atomic import atomic_output, refuse_same_file
from ..atomic import os_error_message
from ..errors import FormatError, OutputWriteError, QemuError, UsageError
from .qmp import QMP

STATE_ATTACHMENT = "qemu.device-state"
META_ATTACHMENT = "qemu.json"
META_VERSION = 1
IGNORE_SHARED = "x-ignore-shared"


def _file_backends(qmp: QMP) -> tuple[list[dict], list[str]]:
    """Shared memory-backend-file objects: id, size, mem-path."""
    sizes = {m.get("id"): m for m in qmp.execute("query-memdev") or []}
    backends, other = [], []
    for child in qmp.execute("qom-list", path="/objects") or []:
        kind = child.get("type", "")
        if not kind.startswith("child<memory-backend"):
            continue
        name = child["name"]
        path = f"/objects/{name}"
        shared = bool(qmp.execute("qom-get", path=path, property="share"))
        if kind == "child<memory-backend-file>" and shared:
            mem_path = qmp.execute("qom-get", path=path, property="mem-path")
            size = int(sizes.get(name, {}).get("size") or qmp.execute("qom-get", path=path, property="size"))
            backends.append({"id": name, "size": size, "mem_path": mem_path})
        else:
            other.append(f"{name} ({kind[6:-1]}, share={'on' if shared else 'off'})")
    for b in backends:
        if os.path.isdir(b["mem_path"]):
            raise QemuError(f"memory backend {b['id']}: mem-path {b['mem_path']} is a directory (QEMU keeps an "
                            f"unlinked file there that vmsnap cannot read); give mem-path a file name")
    return backends, other


def _not_file_backed(other: list[str]) -> QemuError:
    found = "; found: " + ", ".join(other) if other else ""
    return QemuError("the guest's RAM is not in a shared memory-backend-file: start QEMU with "
                     "-object memory-backend-file,id=ID,size=SIZE,mem-path=FILE,share=on "
                     "(and -machine memory-backend=ID)" + found)


def _wait_migration(qmp: QMP, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.execute("query-migrate") or {}
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise QemuError(f"migration {status}: {info.get('error-desc', 'no reason given')}")
        if time.monotonic() > deadline:
            try:
                qmp.execute("migrate_cancel")
            except QemuError:
                pass
            raise QemuError(f"migration did not complete in {timeout:.0f} s (status {status})")
        time.sleep(0.05)


def _migrate(qmp: QMP, state_file: str, caps: dict, use_file: bool, timeout: float) -> dict:
    """Migrate the stopped guest into `state_file`, then put its migration settings back.

    A migration that did not complete (an error, a timeout, Ctrl-C) is cancelled first:
    QEMU refuses to change settings while one runs, and a guest resumed then would run
    on while its migration went on."""
    bandwidth = (qmp.execute("query-migrate-parameters") or {}).get("max-bandwidth")
    if IGNORE_SHARED in caps:
        qmp.execute("migrate-set-capabilities", capabilities=[{"capability": IGNORE_SHARED, "state": use_file}])
    try:
        # The guest is stopped: bandwidth only paces the copy, it cannot change the content.
        qmp.execute("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        qmp.execute("migrate", uri=f"exec:cat > {shlex.quote(state_file)}")
        info = _wait_migration(qmp, timeout)
    except BaseException:
        _quietly(qmp, "migrate_cancel")
        _wait_until_idle(qmp)
        _put_back(qmp, caps, bandwidth, quiet=True)
        raise
    _put_back(qmp, caps, bandwidth, quiet=False)
    return info


def _put_back(qmp: QMP, caps: dict, bandwidth, quiet: bool) -> None:
    """The guest's own migration settings, as they were."""
    run = (lambda command, **args: _quietly(qmp, command, **args)) if quiet else qmp.execute
    if IGNORE_SHARED in caps:
        run("migrate-set-capabilities",
            capabilities=[{"capability": IGNORE_SHARED, "state": bool(caps[IGNORE_SHARED])}])
    if bandwidth is not None:
        run("migrate-set-parameters", **{"max-bandwidth": bandwidth})


def _wait_until_idle(qmp: QMP, timeout: float = 10.0) -> None:
    """Wait for a cancelled migration to end (status cancelling -> cancelled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = (qmp.execute("query-migrate") or {}).get("status")
        except QemuError:
            return
        if status not in ("setup", "active", "cancelling", "device", "pre-switchover", "wait-unplug"):
            return
        time.sleep(0.05)


def _quietly(qmp: QMP, command: str, **arguments) -> None:
    """A QMP command of a cleanup after an error: its own failure must not hide that error."""
    try:
        qmp.execute(command, **arguments)
    except QemuError:
        pass


SAVE_MODES = ("auto", "file", "stream")
HEAD_ATTACHMENT = "qemu.stream-head"


def save(qmp_socket: str, output: str, *, mode: str = "auto", resume: bool = False, level: int | None = None,
         frame_size: int | None = None, jobs: int | None = None, timeout: float = 600.0,
         progress: bool | None = False) -> dict:
    """Stop the guest behind `qmp_socket` and save its device state and memory to `output`.

    mode "file": the RAM is read from the guest's shared memory-backend-file(s) and
    the migration (x-ignore-shared) carries the device state only; "stream": a full
    migration, whose RAM blocks become the regions and whose other parts are kept
    to rebuild the stream on restore; "auto": "file" when the guest has a shared
    memory-backend-file, else "stream".
    The guest stays stopped afterwards unless `resume` is true, in which case it is
    resumed if it was running before (also when the save fails).
    """
    from ..format.defaults import DEFAULT_FRAME_SIZE, DEFAULT_LEVEL
    from ..format.writer import check_frame_size

    if mode not in SAVE_MODES:
        raise UsageError(f"unknown mode {mode!r} (choose from {', '.join(SAVE_MODES)})")

    frame_size = DEFAULT_FRAME_SIZE if frame_size is None else frame_size
    check_frame_size(frame_size, 4096)  # before the guest is touched (QEMU's RAM pages are 4 KiB here)
    if level is not None and not 1 <= level <= 22:
        raise UsageError(f"zstd level must be 1..22, got {level}")
    with QMP(qmp_socket) as qmp:
        backends, other = _file_backends(qmp)
        if mode == "file" and not backends:
            raise _not_file_backed(other)
        use_file = bool(backends) and mode != "stream"
        if not use_file:
            backends = []
        for b in backends:  # before the guest is stopped
            refuse_same_file(output, b["mem_path"], f"the memory of backend {b['id']}")
        caps = {c["capability"]: c["state"] for c in qmp.execute("query-migrate-capabilities") or []}
        if use_file and IGNORE_SHARED not in caps:
            raise QemuError(f"this QEMU has no migration capability {IGNORE_SHARED} (QEMU 4.0 or later needed)")
        if (qmp.execute("query-migrate") or {}).get("status") in ("active", "setup", "postcopy-active"):
            raise QemuError("a migration is already running on this guest")
        before = qmp.execute("query-status") or {}
        was_running = bool(before.get("running"))
        resume_after = resume and was_running
        try:
            # The output file is made before the guest is touched: a name that cannot be created
            # must not leave the guest stopped after a migration (QEMU migrates it only once).
            with atomic_output(output) as out:
                tmpdir = tempfile.mkdtemp(prefix="vmsnap-qemu-")
                state_file = os.path.join(tmpdir, "device-state")
                try:
                    if was_running:
                        qmp.execute("stop")
                    t0 = time.monotonic()
                    info = _migrate(qmp, state_file, caps, use_file, timeout)
                    migrate_s = time.monotonic() - t0
                    if not os.path.exists(state_file):
                        raise QemuError(f"migration completed but wrote no device state to {state_file}")
                    state_size = os.path.getsize(state_file)
                    meta = {
                        "vmsnap_qemu": META_VERSION,
                        "mode": "file" if use_file else "stream",
                        "qemu_version": qmp.version.get("qemu"),
                        "qemu_package": qmp.version.get("package"),
                        "runstate_before": before.get("status"),
                        "capabilities": {IGNORE_SHARED: use_file},
                        "memory_backends": backends,
                        "device_state_bytes": state_size,  # stream mode: the device sections' part of it
                        "migration": {"total-time-ms": info.get("total-time"), "ram": info.get("ram")},
                    }
                    summary = _write_snapshot(out, backends, state_file, meta, level or DEFAULT_LEVEL, frame_size,
                                              jobs, progress)
                finally:
                    shutil.rmtree(tmpdir, ignore_errors=True)
        except BaseException:
            if resume_after:
                _quietly(qmp, "cont")  # the error that stopped the save is the one to report
            raise
        if resume_after:  # after the rename: a guest that does not resume must not cost the snapshot
            try:
                qmp.execute("cont")
            except QemuError as exc:
                raise QemuError(f"{output}: saved, but the guest was not resumed: {exc}") from None
        after = (qmp.execute("query-status") or {}).get("status")
    summary.update(output=output, mode=meta["mode"], memory_backends=[b["id"] for b in backends],
                   ram_blocks=[b["region"] for b in meta.get("blocks", [])],
                   device_state_bytes=meta["device_state_bytes"],
                   migrate_s=round(migrate_s, 3), runstate_before=before.get("status"), runstate_after=after)
    return summary


def _write_snapshot(out, backends: list[dict], state_file: str, meta: dict, level: int, frame_size: int,
                    jobs: int | None, progress: bool | None) -> dict:
    """The .vms of a stopped, migrated guest: file mode's backends and device state, or
    stream mode's whole migration stream (its RAM blocks as regions)."""
    from ..format.writer import SnapshotWriter
    from ..progress import progress_bar
    from ..sources.base import read_exact_chunks
    from ..sources.raw import open_input

    total = sum(b["size"] for b in backends) if backends else None
    with progress_bar(total, "save", progress) as update:
        writer = SnapshotWriter(out, level=level, frame_size=frame_size, jobs=jobs,
                                source=f"qemu:{', '.join(b['id'] for b in backends)}", attachments=True)
        try:
            if backends:
                state_size = meta["device_state_bytes"]
                with open(state_file, "rb") as fh:
                    writer.add_attachment(STATE_ATTACHMENT, read_exact_chunks(fh, state_size, state_file))
                writer.add_attachment(META_ATTACHMENT, [json.dumps(meta, indent=1, sort_keys=True).encode()])
                for b in backends:
                    fh = open_input(b["mem_path"])
                    try:
                        writer.add_region(b["id"], 0, read_exact_chunks(fh, b["size"], b["mem_path"]), update)
                    finally:
                        fh.close()
            else:
                _save_stream(writer, state_file, meta, update)
            return writer.close()
        except BaseException:
            writer.abort()
            raise


def _save_stream(writer, stream: str, meta: dict, update) -> None:
    """A full migration stream: RAM blocks as regions, the rest as two attachments.

    qemu.stream-head is the stream up to the end of the 'ram' SECTION_START (file
    header, configuration, the RAM block list); qemu.device-state is everything
    after the 'ram' SECTION_END (device sections, EOF, VM description). restore
    puts one SECTION_END holding every page between them.
    """
    from ..sources.base import read_exact_chunks
    from ..sources.qemu_migration import QemuMigrationSource

    with QemuMigrationSource(stream) as src:
        head = src.ram_setup_end_offset
        with open(stream, "rb") as fh:
            writer.add_attachment(HEAD_ATTACHMENT, read_exact_chunks(fh, head, stream))
        blocks = []
        for region, chunks in src.regions():
            writer.add_region(region.name, region.base, chunks, update)
            blocks.append({"region": region.name, "length": region.size})
        tail = src.device_state_offset
        meta.update(ram_section_id=src.ram_section_id, footers=src.section_footers, page_size=src.page_size,
                    blocks=blocks, machine=src.machine)
    size = os.path.getsize(stream)
    with open(stream, "rb") as fh:
        fh.seek(tail)
        writer.add_attachment(STATE_ATTACHMENT, read_exact_chunks(fh, size - tail, stream))
    meta["device_state_bytes"] = size - tail
    writer.add_attachment(META_ATTACHMENT, [json.dumps(meta, indent=1, sort_keys=True).encode()])


def write_stream(snap, meta: dict, out) -> int:
    """Rebuild a complete migration stream from a "stream" mode snapshot; return its length.

    Head attachment, then one 'ram' SECTION_END with a record for every page of every
    block (ZERO records for zero pages, PAGE records with the bytes otherwise, each
    block's first record naming it), EOS and the footer, then the device state.
    Every digest is checked on the way (Snapshot.produce).
    """
    import numpy as np

    from ..sources import qemu_migration_structs as MQ

    ps, sid = int(meta["page_size"]), int(meta["ram_section_id"])
    written = 0

    def put(data) -> None:
        nonlocal written
        try:
            out.write(data)
        except OSError as exc:
            raise OutputWriteError(os_error_message(exc)) from None
        written += len(data)

    for piece in snap.read_attachment(HEAD_ATTACHMENT):
        put(piece)
    put(bytes([MQ.QEMU_VM_SECTION_END]) + sid.to_bytes(4, "big"))
    zero_rec = np.dtype([("word", ">u8"), ("fill", "u1")])
    state = {"region": None, "addr": 0, "pending": bytearray()}

    def header(addr: int, flag: int, region) -> bytes:
        if state["region"] == region.name:
            return (addr | flag | MQ.RAM_SAVE_FLAG_CONTINUE).to_bytes(8, "big")
        state["region"] = region.name
        name = region.name.encode()
        return (addr | flag).to_bytes(8, "big") + bytes([len(name)]) + name

    def page(region, data) -> None:
        put(header(state["addr"], MQ.RAM_SAVE_FLAG_PAGE, region))
        put(data)
        state["addr"] += ps

    def sink(region, piece) -> None:
        # Pieces follow the snapshot's pages, which may be smaller than QEMU's (a .vms saved
        # again with --page-size 1K): a run of zeros may end or begin inside a QEMU page.
        if isinstance(piece, int):
            if state["pending"]:
                k = min(piece, ps - len(state["pending"]))
                state["pending"] += bytes(k)
                piece -= k
                if len(state["pending"]) < ps:
                    return
                page(region, bytes(state["pending"]))
                state["pending"] = bytearray()
            n, addr = piece // ps, state["addr"]
            if n:
                put(header(addr, MQ.RAM_SAVE_FLAG_ZERO, region) + b"\0")
                if n > 1:
                    recs = np.zeros(n - 1, dtype=zero_rec)
                    recs["word"] = (np.arange(1, n, dtype=np.uint64) * ps + addr) | (
                        MQ.RAM_SAVE_FLAG_ZERO | MQ.RAM_SAVE_FLAG_CONTINUE)
                    put(recs.tobytes())
                state["addr"] = addr + n * ps
            state["pending"] += bytes(piece - n * ps)
            return
        data = memoryview(piece).cast("B")
        if state["pending"]:
            state["pending"] += data
            data = memoryview(bytes(state["pending"]))
            state["pending"] = bytearray()
        full = len(data) // ps * ps
        for off in range(0, full, ps):
            page(region, data[off:off + ps])
        if full < len(data):
            state["pending"] += data[full:]

    regions = [snap.region(b["region"]) for b in meta["blocks"]]
    for r in regions:
        state["addr"] = 0
        snap.produce(sink, [r])
        if state["pending"] or state["addr"] != r.size:
            raise FormatError(f"{snap.path}: region {r.name} is not a whole number of {ps}-byte pages")
    put(MQ.RAM_SAVE_FLAG_EOS.to_bytes(8, "big"))
    if meta["footers"]:
        put(bytes([MQ.QEMU_VM_SECTION_FOOTER]) + sid.to_bytes(4, "big"))
    for piece in snap.read_attachment(STATE_ATTACHMENT):
        put(piece)
    return written


def _meta(snap, path: str) -> dict:
    if STATE_ATTACHMENT not in snap.attachments or META_ATTACHMENT not in snap.attachments:
        raise FormatError(f"{path}: not a `vmsnap qemu save` snapshot (no {STATE_ATTACHMENT} attachment)")
    try:
        meta = json.loads(b"".join(snap.read_attachment(META_ATTACHMENT)))
    except ValueError:
        raise FormatError(f"{path}: malformed {META_ATTACHMENT} attachment") from None
    if meta.get("vmsnap_qemu") != META_VERSION:
        raise FormatError(f"{path}: {META_ATTACHMENT} version {meta.get('vmsnap_qemu')} is not supported")
    return meta


def _mem_targets(meta: dict, mem_paths, path: str) -> dict[str, str]:
    ids = [b["id"] for b in meta["memory_backends"]]
    if isinstance(mem_paths, str):
        mem_paths = [mem_paths]
    targets: dict[str, str] = {}
    for item in mem_paths:
        if "=" in item and item.split("=", 1)[0] in ids:
            key, value = item.split("=", 1)
        elif len(ids) == 1:
            key, value = ids[0], item
        else:
            raise UsageError(f"{path} has memory backends {', '.join(ids)}: give --mem-path ID=PATH for each")
        if key in targets:
            raise UsageError(f"memory backend {key}: more than one --mem-path")
        targets[key] = value
    missing = [i for i in ids if i not in targets]
    if missing:
        raise UsageError(f"no --mem-path for memory backend {', '.join(missing)}")
    return targets


def restore(snapshot: str, mem_paths=None, *, state_path: str | None = None, sparse: bool = True,
            jobs: int | None = None, progress: bool | None = False) -> dict:
    """Write the guest memory back to `mem_paths` and the device state beside it.

    mem_paths: a path (one memory backend) or a list of "ID=PATH". Returns what
    was written and how to start QEMU on it (`qemu_args`, `qmp_commands`).
    """
    from .. import api
    from ..format.reader import Snapshot

    with Snapshot(snapshot) as snap:
        meta = _meta(snap, snapshot)
        if meta.get("mode") == "stream":
            if mem_paths:
                raise UsageError(f"{snapshot}: the guest was not file-backed, its RAM goes back through the "
                                 "migration stream: no --mem-path")
            if not state_path and snapshot == "-":
                raise UsageError("the snapshot comes from stdin: there is no name to put its migration stream "
                                 "beside; give --state-path")
            state_path = state_path or (snapshot[:-4] if snapshot.endswith(".vms") else snapshot) + ".mig"
            with atomic_output(state_path, source=snapshot) as out:
                written = write_stream(snap, meta, out)
            return {
                "file": snapshot, "mode": "stream", "memory": [], "device_state": state_path,
                "device_state_bytes": written, "qemu_version": meta.get("qemu_version"),
                "memory_backend_objects": [], "qemu_args": ["-S", "-incoming", "defer"],
                "qmp_commands": [{"execute": "migrate-incoming",
                                  "arguments": {"uri": f"exec:cat {shlex.quote(os.path.abspath(state_path))}"}}],
            }
        if not mem_paths:
            raise UsageError(f"{snapshot}: --mem-path is needed (the guest's memory backend file)")
        targets = _mem_targets(meta, mem_paths, snapshot)
        first = targets[meta["memory_backends"][0]["id"]]
        state_path = state_path or first + ".devstate"
        for t in targets.values():  # all refused before anything is written
            refuse_same_file(t, snapshot, "the snapshot")
            if os.path.realpath(t) == os.path.realpath(state_path):
                raise UsageError(f"{state_path}: is also a --mem-path; write the device state to another name")
        with atomic_output(state_path, source=snapshot) as out:
            written = _copy(snap.read_attachment(STATE_ATTACHMENT), out)
    memory = []
    for b in meta["memory_backends"]:
        target = targets[b["id"]]
        r = api.restore(snapshot, target, region=b["id"], sparse=sparse, jobs=jobs, progress=progress)
        memory.append({"id": b["id"], "path": target, "bytes": r["bytes"]})
        if r["bytes"] != b["size"]:
            raise FormatError(f"{snapshot}: region {b['id']} holds {r['bytes']} bytes, the backend had {b['size']}")
    state_abs = os.path.abspath(state_path)
    objects = [f"memory-backend-file,id={b['id']},size={b['size']},mem-path={os.path.abspath(targets[b['id']])},"
               "share=on" for b in meta["memory_backends"]]
    return {
        "file": snapshot,
        "mode": "file",
        "memory": memory,
        "device_state": state_path,
        "device_state_bytes": written,
        "qemu_version": meta.get("qemu_version"),
        "memory_backend_objects": objects,
        "qemu_args": ["-S", "-incoming", "defer"],
        "qmp_commands": [
            {"execute": "migrate-set-capabilities",
             "arguments": {"capabilities": [{"capability": IGNORE_SHARED, "state": True}]}},
            {"execute": "migrate-incoming", "arguments": {"uri": f"exec:cat {shlex.quote(state_abs)}"}},
        ],
    }


def format_restore(result: dict) -> str:
    """The restore result as instructions for a person (what `vmsnap qemu restore` prints)."""
    lines = [f"restored memory backend {m['id']} ({m['bytes']} bytes) to {m['path']}" for m in result["memory"]]
    if result.get("mode") == "stream":
        lines.append(f"wrote the migration stream, RAM and device state ({result['device_state_bytes']} bytes), "
                     f"to {result['device_state']}")
        lines.append("start QEMU with the saved guest's command line (same RAM size and devices)")
    else:
        lines.append(f"wrote the device state ({result['device_state_bytes']} bytes) to {result['device_state']}")
        lines.append("start QEMU with the saved guest's command line, its memory backend(s) being")
        lines += [f"  -object {o}" for o in result["memory_backend_objects"]]
    lines.append("plus:")
    lines.append("  " + " ".join(shlex.quote(a) for a in result["qemu_args"]))
    lines.append("then send these QMP commands:")
    lines += ["  " + json.dumps(c) for c in result["qmp_commands"]]
    lines.append('wait until query-migrate reports "completed", and resume the guest with QMP "cont"')
    return "\n".join(lines)


def device_state(snapshot: str, output: str = "-") -> int:
    """Write the saved device-state stream to `output` ('-': stdout, e.g. for -incoming exec:)."""
    from ..format.reader import Snapshot

    with Snapshot(snapshot) as snap:
        meta = _meta(snap, snapshot)
        with atomic_output(output, source=snapshot) as out:
            if meta.get("mode") == "stream":
                return write_stream(snap, meta, out)
            return _copy(snap.read_attachment(STATE_ATTACHMENT), out)


def _copy(pieces, out) -> int:
    n = 0
    for piece in pieces:
        try:
            out.write(piece)
        except OSError as exc:
            raise OutputWriteError(os_error_message(exc)) from None
        n += len(piece)
    return n
