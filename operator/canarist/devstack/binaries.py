"""Where the locally built cluster binaries live, and building them when they are missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-binaries.sh"
REQUIRED = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd", "kwok", "kwokctl", "helm",
            "traefik")


def cache_dir() -> Path:
    if "CANARIST_CACHE" in os.environ:
        return Path(os.environ["CANARIST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "canarist"


def bin_dir() -> Path:
    return cache_dir() / "bin"


def ensure_binaries() -> Path:
    """Return the directory holding every binary of the local cluster, building the missing ones."""
    directory = bin_dir()
    missing = [name for name in REQUIRED if not os.access(directory / name, os.X_OK)]
    if missing:
        if not BUILD_SCRIPT.exists():
            raise RuntimeError(
                f"local cluster binaries missing from {directory}: {', '.join(missing)}; "
                "run hack/build-binaries.sh from a canarist checkout (or `make binaries`)"
            )
        subprocess.run([str(BUILD_SCRIPT)], check=True, stdout=subprocess.DEVNULL)
    return directory
