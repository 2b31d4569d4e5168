"""A throwaway PostgreSQL server on 127.0.0.1 for tests: `with LocalPostgres.start() as pg: pg.create_database("x")`.

It runs Debian's PostgreSQL binaries (hack/install-postgres.sh installs them) on a fresh data
directory in a temporary work directory: listening on 127.0.0.1 and a free port only, its unix
socket in the work directory, fsync off (nothing in it needs to survive a crash). initdb and
postgres refuse to run as root, so under root both run as the `postgres` user (else `nobody`),
which owns the work directory. `stop()` ends the server and removes everything; a watchdog
process does the same when the process that started it dies, even by SIGKILL.

    python -m canarist.devstack.postgres watch OWNER_PID SERVER_PID WORKDIR   (the watchdog)
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .procs import free_port, pid_alive, start_process, stop_process_group, wait_until

__all__ = ["LocalPostgres", "postgres_bin_dir"]

SUPERUSER = "canarist"


def postgres_bin_dir() -> Path:
    """Where initdb and postgres are: Debian's newest /usr/lib/postgresql/*/bin, else the PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise FileNotFoundError("PostgreSQL's server binaries are missing: run hack/install-postgres.sh "
                            "(make postgres) to install Debian's postgresql package")


def _unprivileged_prefix() -> tuple[list[str], int | None, int | None]:
    """(argv prefix, uid, gid) to run a command as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return [], None, None
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        # setpriv execs the command itself (no extra process), so it leads the process group.
        return (["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"],
                user.pw_uid, user.pw_gid)
    raise RuntimeError("running as root, and neither a postgres nor a nobody user exists to run PostgreSQL as")


@dataclass(eq=False)
class LocalPostgres:
    """A running throwaway server; `url(dbname)` is a postgresql:// URL for the superuser."""

    workdir: Path
    port: int
    _proc: subprocess.Popen | None = None
    _watchdog: subprocess.Popen | None = None
    databases: list[str] = field(default_factory=list)

    LOG = "postgres.log"

    @classmethod
    def start(cls, workdir: Path | None = None, timeout: float = 60.0) -> LocalPostgres:
        import tempfile

        bin_dir = postgres_bin_dir()
        prefix, uid, gid = _unprivileged_prefix()
        workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="canarist-pg-"))
        workdir.mkdir(parents=True, exist_ok=True)
        if uid is not None:
            os.chown(workdir, uid, gid)
        data = workdir / "data"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        init = subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
             "--locale=C", "--no-sync", "--no-instructions"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        if init.returncode != 0:
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stdout[-2000:]}")
        port = free_port()
        server = cls(workdir, port)
        server._proc = start_process(
            [*prefix, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={workdir}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=60", "-c", "shared_buffers=32MB", "-c", "log_min_messages=warning"],
            workdir / cls.LOG, env=env)
        server._watchdog = start_process(
            [sys.executable, "-m", "canarist.devstack.postgres", "watch", str(os.getpid()), str(server._proc.pid),
             str(workdir)], workdir.parent / f"{workdir.name}-watchdog.log")
        try:
            wait_until(server._ready, timeout, f"PostgreSQL on 127.0.0.1:{port} (log: {workdir / cls.LOG})",
                       interval=0.1)
        except BaseException as exc:
            exc.add_note(f"postgres log: {server.log_tail()}")
            server.stop()
            raise
        return server

    def _ready(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {self._proc.returncode if self._proc else None}")
        import psycopg

        with psycopg.connect(self.url("postgres"), connect_timeout=2):
            return True

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.databases.append(name)
        return self.url(name)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.workdir / self.LOG).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (fast shutdown, then SIGKILL) and the watchdog; remove the work directory."""
        if self._proc is not None:
            _stop_server(self._proc.pid)
            self._proc.poll()
            self._proc = None
        if self._watchdog is not None:
            stop_process_group(self._watchdog.pid, grace=2)
            self._watchdog.poll()
            self._watchdog = None
            (self.workdir.parent / f"{self.workdir.name}-watchdog.log").unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_server(pid: int) -> None:
    # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client to disconnect).
    try:
        os.killpg(pid, signal.SIGINT)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    stop_process_group(pid, grace=2)


def _watch(owner_pid: int, server_pid: int, workdir: Path) -> None:
    """Stop the server and remove its files once `owner_pid` is gone (or the server stopped)."""
    while pid_alive(owner_pid) and pid_alive(server_pid):
        time.sleep(0.5)
    _stop_server(server_pid)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "watch":
        _watch(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.exit(__doc__)
