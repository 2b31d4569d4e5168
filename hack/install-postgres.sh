#!/usr/bin/env bash
# Makes sure Debian's PostgreSQL server binaries (initdb, postgres) are installed: installs the
# postgresql package when missing and running as root. The judge's PostgreSQL tests start a
# throwaway server of their own on loopback (canarist.devstack.postgres), never the system one.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-postgres: PostgreSQL is missing. Install Debian's package as root:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends postgresql" >&2
  exit 1
fi
echo "install-postgres: installing Debian's postgresql package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
# The package may start a system-wide cluster; tests run their own on loopback.
if command -v systemctl >/dev/null && systemctl is-active --quiet postgresql 2>/dev/null; then
  systemctl stop postgresql || true
fi
