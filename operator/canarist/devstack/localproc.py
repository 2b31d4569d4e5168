"""A server the local stack runs as a child process on 127.0.0.1: the parent's handle, and the child's side.

The parent (`LocalServerProcess`, the base of `DemoApp`, `ScriptedLLM` and `JudgeServer`) starts
the child in its own process group with its output in a log in the work directory, reads the
port it bound from a port file, waits for `/healthz`, and stops the whole group. Processes still
running at interpreter exit are stopped then; a child started with `--parent-pid` also exits by
itself when its parent dies by SIGKILL (`exit_with_parent`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar, Self

from .procs import pid_alive, stop_process_group, wait_until

# Direct connections only: an http_proxy in the environment must not capture loopback calls.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Stopped at interpreter exit should a test forget; `--parent-pid` covers the parent being killed.
_RUNNING: set[LocalServerProcess] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


# -- the child's side -------------------------------------------------------------------------------


def exit_with_parent(parent_pid: int) -> None:
    """Exit when `parent_pid` is gone, even if it died by SIGKILL and never stopped us. Blocks:
    run it on a daemon thread."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


def write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)  # atomic, so the parent never reads half a number


# -- the parent's side ------------------------------------------------------------------------------


def make_workdir(workdir: Path | None, prefix: str) -> tuple[Path, bool]:
    """(the work directory, whether we created it): a new temporary one when `workdir` is None,
    otherwise `workdir`, created if need be."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix=prefix)), True
    workdir = Path(workdir)
    owns = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, owns


class LocalServerProcess:
    """A child server process on 127.0.0.1; `stop()` (or `with`) ends its process group and removes
    its work directory if it created it.

    Subclasses set `LOG` (and `PORT_FILE`, `STOP_GRACE`), and have the attributes `port`,
    `workdir`, `_proc` and `_owns_workdir`; their `start()` launches the process with
    `procs.start_process(argv, workdir / LOG)` and ends with `_until_ready`.
    """

    LOG: ClassVar[str]                 # its log, in the work directory
    PORT_FILE: ClassVar[str] = "port"  # where it writes the port it bound, in the work directory
    STOP_GRACE: ClassVar[float] = 5.0  # seconds between SIGTERM and SIGKILL

    port: int
    workdir: Path
    _proc: subprocess.Popen | None
    _owns_workdir: bool

    @property
    def _label(self) -> str:
        """What messages call it."""
        return self.LOG.removesuffix(".log")

    @classmethod
    def _fresh_port_file(cls, workdir: Path) -> Path:
        """Its port file, with whatever an earlier run left there removed."""
        port_file = workdir / cls.PORT_FILE
        port_file.unlink(missing_ok=True)
        return port_file

    def _until_ready(self, port_file: Path, timeout: float) -> Self:
        """Wait for its port file and `/healthz`. On failure, stop it and re-raise with its log's tail."""
        _RUNNING.add(self)
        try:
            self.port = self._wait_for_port(port_file, timeout)
            wait_until(self.healthy, timeout, f"{self._label} to answer /healthz")
        except BaseException as exc:
            exc.add_note(f"{self._label} log: {self.log_tail()}")
            self.stop()
            raise
        return self

    def _wait_for_port(self, port_file: Path, timeout: float) -> int:
        def port_or_exit() -> int | bool:
            if self._proc is None or self._proc.poll() is not None:
                return True  # exited: stop waiting, reported below
            return int(port_file.read_text()) if port_file.exists() else 0

        found = wait_until(port_or_exit, timeout, f"{self._label} to write {port_file}", interval=0.05)
        if found is True:
            raise RuntimeError(f"{self._label} exited with {self._proc.returncode if self._proc else None}")
        return int(found)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.workdir / self.LOG).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and pid_alive(self._proc.pid)

    def healthy(self) -> bool:
        return self._call("GET", "/healthz")[0] == 200

    def _call(self, method: str, path: str, data: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with _OPENER.open(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def stop(self) -> None:
        """Stop the process group (SIGTERM, then SIGKILL) and remove the work directory if it
        created it. Idempotent."""
        if self._proc is not None:
            stop_process_group(self._proc.pid, grace=self.STOP_GRACE)
            self._proc.poll()  # let Popen see the exit, so it does not warn about a live child
            self._proc = None
        _RUNNING.discard(self)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
