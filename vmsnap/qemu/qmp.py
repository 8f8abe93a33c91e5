"""A small QMP client: one command at a time over a unix socket, events skipped.

QMP (QEMU Machine Protocol) is JSON lines: a greeting, then `qmp_capabilities`,
then {"execute": ..., "arguments": ...} answered by {"return": ...} or
{"error": {"class": ..., "desc": ...}}; asynchronous {"event": ...} lines can
come at any time and are ignored here.
"""

from __future__ import annotations

import json
import socket

from ..errors import QemuError


class QMP:
    def __init__(self, path: str, timeout: float = 60.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except FileNotFoundError:
            self.sock.close()
            raise QemuError(f"{path}: no such QMP socket") from None
        except ConnectionRefusedError:
            self.sock.close()
            raise QemuError(f"{path}: connection refused (is QEMU running with -qmp unix:{path},server=on?)") from None
        except OSError as exc:
            self.sock.close()
            raise QemuError(f"{path}: cannot connect to QMP: {exc.strerror or exc}") from None
        self._buf = b""
        self._sent = 0  # commands sent: each carries its number as its id, echoed in its answer
        self._broken: QemuError | None = None
        try:
            greeting = self._read()
            if "QMP" not in greeting:
                raise QemuError(f"{path}: not a QMP socket (greeting {str(greeting)[:80]})")
            self.version = greeting["QMP"].get("version", {})
            self.execute("qmp_capabilities")
        except BaseException:
            self.sock.close()
            raise

    def _read(self) -> dict:
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise self._broken_by("QMP did not answer in time") from None
            except OSError as exc:
                raise self._broken_by(f"QMP connection failed: {exc.strerror or exc}") from None
            if not chunk:
                raise self._broken_by("QEMU closed the QMP connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            raise QemuError(f"{self.path}: not a QMP socket (got {line[:60]!r})") from None

    def _broken_by(self, what: str) -> QemuError:
        """The connection's end: every later command fails at once with the same error (the
        cleanup after an error sends several, and each would wait out the timeout again)."""
        self._broken = QemuError(f"{self.path}: {what}")
        return self._broken

    def execute(self, command: str, **arguments):
        """Run one command and return its "return" value; a QMP error raises QemuError."""
        if self._broken is not None:
            raise self._broken
        self._sent += 1
        msg: dict = {"execute": command, "id": self._sent}
        if arguments:
            msg["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            raise self._broken_by(f"QMP connection failed: {exc.strerror or exc}") from None
        while True:
            reply = self._read()
            if "event" in reply or reply.get("id") != self._sent:
                continue  # an event, or the late answer of a command a Ctrl-C left unread
            if "error" in reply:
                err = reply["error"]
                raise QemuError(f"QMP {command} failed: {err.get('desc', err)}")
            return reply.get("return")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "QMP":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
