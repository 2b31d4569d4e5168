#!/usr/bin/env bash
# Run a command in a private network namespace of its own (DESIGN.md §5): loopback up, a
# non-loopback address on lo with a default route through it (kube-apiserver picks its advertise
# address from the default route), and the pod range 10.244.0.0/16 bindable, so simulated pods'
# processes listen on their pod IPs. Nothing in it reaches outside; everything it uses is its own.
#
#   hack/in-netns.sh CMD [ARGS...]
#
# Already inside (CANARIST_NETNS=1): runs CMD as it is.
set -euo pipefail
if [[ "${CANARIST_NETNS:-}" == 1 ]]; then
  exec "$@"
fi
if ! command -v ip >/dev/null; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "in-netns: the ip command is missing; install Debian's iproute2: sudo apt-get install -y iproute2" >&2
    exit 1
  fi
  echo "in-netns: installing Debian's iproute2 (the ip command)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
fi
if [[ "$(id -u)" == 0 ]]; then
  unshare_flags=(-n)
else
  unshare_flags=(-r -n)  # a user namespace grants the network namespace's own CAP_NET_ADMIN
fi
export CANARIST_NETNS=1
exec unshare "${unshare_flags[@]}" -- bash -c '
  set -euo pipefail
  ip link set lo up
  ip addr add 10.255.0.1/32 dev lo
  ip route add default via 10.255.0.1 dev lo
  ip route add local 10.244.0.0/16 dev lo table local
  exec "$@"
' in-netns "$@"
