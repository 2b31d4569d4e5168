"""`canarist judge serve` as a local process, for the end-to-end tests and the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .localproc import LocalServerProcess
from .procs import start_process


@dataclass(eq=False)
class JudgeServer(LocalServerProcess):
    """A judge process started by `JudgeServer.start`; `stop()` ends it. Its work directory (the
    database, the log) is kept."""

    workdir: Path
    proc: subprocess.Popen
    port: int

    LOG = "judge.log"
    PORT_FILE = "judge.port"
    STOP_GRACE = 10.0

    def __post_init__(self) -> None:
        self._proc, self._owns_workdir = self.proc, False

    @classmethod
    def start(cls, workdir: Path, llm_base_url: str, *, sample_rate: float = 1.0, model: str = "scripted-judge",
              api_key: str | None = None, extra: tuple[str, ...] = ()) -> "JudgeServer":
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        port_file = cls._fresh_port_file(workdir)
        script = Path(sys.executable).parent / "canarist"
        argv = [str(script)] if script.exists() else [sys.executable, "-m", "canarist.cli.main"]
        argv += ["judge", "serve", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                 "--db", str(workdir / "judge.db"), "--sample-rate", repr(sample_rate),
                 "--llm-base-url", llm_base_url, "--llm-model", model, "--timeout", "10", "--retries", "1",
                 "--backoff", "0.05", *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CANARIST_JUDGE_")}
        if api_key is not None:
            env["OPENAI_API_KEY"] = api_key
        server = cls(workdir, start_process(argv, workdir / cls.LOG, env=env), 0)
        return server._until_ready(port_file, 30)

    def log_tail(self, chars: int = 3000) -> str:
        return super().log_tail(chars)
