"""`python -m canarist.devstack up`: run the local stack until Ctrl-C; `down`: remove a leftover one."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from .binaries import bin_dir
from .stack import LocalStack, enter_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m canarist.devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--name", default="canarist", help="stack name (default: %(default)s)")
    parser.add_argument("--nodes", type=int, default=2, help="simulated nodes (default: %(default)s)")
    args = parser.parse_args(argv)

    stack = LocalStack(args.name, nodes=args.nodes)
    if args.command == "down":
        stack.cluster.bin_dir = bin_dir()
        stack.stop()
        print(f"stack {args.name!r} removed")
        return 0

    # Ctrl-C and SIGTERM both lead to the same teardown.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    print(f"starting the local stack {args.name!r} (the first run builds the cluster binaries)...", flush=True)
    try:
        stack.start()
        gateway = stack.gateway.url if stack.gateway else "-"
        print(f"""
local stack up in {time.monotonic() - started:.1f}s, in a network namespace of its own (pods' processes
listen on their pod IPs there). From another terminal, a shell inside it:
  {enter_command()}
then, in that shell:
  Kubernetes : export KUBECONFIG={stack.kubeconfig}
               kubectl get nodes
  kubectl    : {stack.cluster.bin_dir}/kubectl (v{_short(stack)})
  Prometheus : curl '{stack.prometheus.url}/api/v1/query?query=up'
  Gateway    : curl -H 'Host: <an HTTPRoute hostname>' {gateway}/   (Traefik; GatewayClass traefik,
               Gateway canarist-gateway/gateway for your routes' parentRefs)

Press Ctrl-C to stop everything.""", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping the local stack...", flush=True)
    finally:
        stack.stop()
    print("stopped; nothing of the stack is left running.")
    return 0


def _short(stack: LocalStack) -> str:
    return stack.cluster.kubectl("version", "--client", "-o", "json").stdout.split('"gitVersion": "v')[1].split('"')[0]


if __name__ == "__main__":
    sys.exit(main())
