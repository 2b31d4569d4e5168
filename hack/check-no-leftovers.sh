#!/usr/bin/env bash
# Fails when a process of the named local stack (default: the tests' one) is still running: every
# one of them names a path inside the stack's work directory on its command line.
set -uo pipefail
cache="${CANARIST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canarist}"
stack="${1:-canarist-test}"
left=$(pgrep -af -- "$cache/stacks/$stack" | grep -v -e pgrep -e check-no-leftovers || true)
if [ -n "$left" ]; then
  echo "check-no-leftovers: processes of the local stack survived:" >&2
  echo "$left" >&2
  exit 1
fi
echo "check-no-leftovers: no process of the local stack $stack is running"
