"""`canarist judge serve` as a local process, for the end-to-end tests and the demo."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .procs import start_process, stop_process_group, wait_until

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


@dataclass
class JudgeServer:
    workdir: Path
    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, llm_base_url: str, *, sample_rate: float = 1.0, model: str = "scripted-judge",
              api_key: str | None = None, extra: tuple[str, ...] = ()) -> "JudgeServer":
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        port_file = workdir / "judge.port"
        port_file.unlink(missing_ok=True)
        script = Path(sys.executable).parent / "canarist"
        argv = [str(script)] if script.exists() else [sys.executable, "-m", "canarist.cli.main"]
        argv += ["judge", "serve", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                 "--db", str(workdir / "judge.db"), "--sample-rate", repr(sample_rate),
                 "--llm-base-url", llm_base_url, "--llm-model", model, "--timeout", "10", "--retries", "1",
                 "--backoff", "0.05", *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CANARIST_JUDGE_")}
        if api_key is not None:
            env["OPENAI_API_KEY"] = api_key
        proc = start_process(argv, workdir / "judge.log", env=env)
        try:
            port = wait_until(lambda: proc.poll() is None and port_file.exists() and int(port_file.read_text()), 30,
                              f"the judge to write its port file (log: {workdir / 'judge.log'})")
            server = cls(workdir, proc, port)
            wait_until(server.healthy, 10, "the judge's /healthz")
        except BaseException:
            stop_process_group(proc.pid, grace=5)
            raise
        return server

    def healthy(self) -> bool:
        with _OPENER.open(self.url + "/healthz", timeout=2) as response:
            return response.status == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process_group(self.proc.pid, grace=10)
        self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.workdir / "judge.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""
