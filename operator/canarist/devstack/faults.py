"""Faults for tests: a TCP proxy that can black-hole or refuse connections, and real API-server errors.

`TcpFaultProxy` sits between a client and the kube-apiserver (TLS passes through untouched) so a
test can make the network fail the way production networks do: a connection that silently stops
carrying bytes (a dead NAT entry or peer) or a server that cannot be reached at all.

`failing_writes` makes the real kube-apiserver answer writes with HTTP 500 through a validating
admission webhook that points at a port where nothing listens, so tests see the errors a real
cluster returns rather than a mock's idea of them.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes
import yaml

from .procs import free_port, wait_until


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    pumps: list[asyncio.Task] = field(default_factory=list)
    severed: bool = False

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: the peer sees 'connection reset' at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed
    writer.transport.abort()


class TcpFaultProxy:
    """Forwards 127.0.0.1:`port` to `upstream_host:upstream_port`, with faults on demand.

    Runs an asyncio loop in a daemon thread, so it never outlives the process that owns it.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._refusing = False
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    @classmethod
    def for_kubeconfig(cls, kubeconfig_path: Path | str) -> "TcpFaultProxy":
        """A proxy in front of the API server of the kubeconfig's current cluster."""
        server = urlsplit(_current_cluster(yaml.safe_load(Path(kubeconfig_path).read_text()))["server"])
        return cls(server.hostname or "127.0.0.1", server.port or 443)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "TcpFaultProxy":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tcp-fault-proxy-{id(self)}",
                                        daemon=True)
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = self._server = None

    def __enter__(self) -> "TcpFaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------------------

    def sever(self) -> None:
        """Every connection open now stops carrying bytes either way but stays open; new ones work."""
        self._run(self._sever())

    def refuse(self) -> None:
        """Reset every open connection, and every new one as soon as it is accepted, until `accept()`."""
        self._run(self._refuse())

    def accept(self) -> None:
        """Forward new connections normally again."""
        self._refusing = False

    @property
    def open_connections(self) -> int:
        """Connections that still forward bytes (severed ones do not count)."""
        return sum(not c.severed for c in list(self._connections))

    def kubeconfig_via(self, kubeconfig_path: Path | str, out_path: Path | str) -> Path:
        """Write a copy of the kubeconfig whose clusters are reached through this proxy.

        The URL stays https on 127.0.0.1, so TLS is verified end to end against the API server's
        own certificate (which names 127.0.0.1); the proxy never sees plaintext.
        """
        source, out = Path(kubeconfig_path), Path(out_path)
        config = yaml.safe_load(source.read_text())
        for entry in config.get("clusters") or []:
            entry["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        _absolute_paths(config, source.parent.resolve())
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(config))
        return out

    # -- the loop's side -----------------------------------------------------------------------

    def _run(self, coro) -> object:
        assert self._loop is not None, "proxy not started"
        future: Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)  # the client sees what it would see without the proxy: no server
            return
        conn = _Connection(writer, up_writer)
        conn.pumps = [asyncio.create_task(_pump(reader, up_writer)), asyncio.create_task(_pump(up_reader, writer))]
        self._connections.add(conn)
        await asyncio.gather(*conn.pumps, return_exceptions=True)
        if not conn.severed:  # a severed connection is kept open on purpose, until refuse() or stop()
            self._connections.discard(conn)
            for w in (writer, up_writer):
                w.close()

    async def _sever(self) -> None:
        for conn in list(self._connections):
            conn.severed = True
            # Cancelling the pumps stops forwarding; the sockets stay open (the set keeps a
            # reference, so they are not garbage-collected either) and unread bytes pile up in
            # the kernel, exactly like a peer that vanished without a FIN or RST.
            for pump in conn.pumps:
                pump.cancel()

    async def _refuse(self) -> None:
        self._refusing = True
        self._drop_all()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._drop_all()
        # Let the handlers finish now that their pumps are cancelled, so closing the loop leaves no
        # pending task (cancelling a handler itself makes asyncio log its CancelledError).
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()

    def _drop_all(self) -> None:
        for conn in list(self._connections):
            conn.severed = False
            for pump in conn.pumps:
                pump.cancel()
            conn.reset()
            self._connections.discard(conn)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()  # pass a half-close on, as TCP would
    except (ConnectionError, OSError):
        return


def _current_cluster(config: dict) -> dict:
    contexts = {c["name"]: c["context"] for c in config.get("contexts") or []}
    clusters = {c["name"]: c["cluster"] for c in config.get("clusters") or []}
    current = config.get("current-context")
    name = contexts[current]["cluster"] if current in contexts else next(iter(clusters))
    return clusters[name]


def _absolute_paths(config: dict, base: Path) -> None:
    """Relative file references in a kubeconfig are relative to it; the copy may live elsewhere."""
    entries = [c["cluster"] for c in config.get("clusters") or []] + [u["user"] for u in config.get("users") or []]
    for entry in entries:
        for key in ("certificate-authority", "client-certificate", "client-key", "tokenFile"):
            if entry.get(key) and not Path(entry[key]).is_absolute():
                entry[key] = str(base / entry[key])


# -- API-server errors via an admission webhook ------------------------------------------------

HTTPROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")
WRITES = ("CREATE", "UPDATE", "DELETE")
PROBE_LABEL = "canarist.dev/fault-probe"


class ApiFaults:
    """Makes the real kube-apiserver fail chosen writes in one namespace with HTTP 500."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self._admission = kubernetes.client.AdmissionregistrationV1Api(api)
        self._core = kubernetes.client.CoreV1Api(api)

    @contextmanager
    def failing_writes(self, namespace: str, resources: Sequence[tuple[str, str, str]] = (HTTPROUTES,),
                       operations: Sequence[str] = WRITES, timeout: float = 30,
                       object_selector: dict | None = None) -> Iterator[str]:
        """While inside, `operations` on `resources` ("deployments/scale" works too) in `namespace` fail;
        with `object_selector` (a label selector), only on objects it matches.

        Yields the ValidatingWebhookConfiguration's name. The API server applies webhook
        configuration from an informer, so both entering and leaving wait until it is in force.
        """
        name = f"canarist-fault-{uuid.uuid4().hex[:8]}"
        self._admission.create_validating_webhook_configuration(self._configuration(
            name, namespace, resources, operations, object_selector))
        try:
            wait_until(lambda: not self._probe_passes(namespace, name), timeout, f"webhook {name} in force")
            yield name
        finally:
            try:
                self._admission.delete_validating_webhook_configuration(name)
            except kubernetes.client.ApiException as exc:
                if exc.status != 404:
                    raise
            wait_until(lambda: self._probe_passes(namespace, name), timeout, f"webhook {name} gone")

    @staticmethod
    def _configuration(name: str, namespace: str, resources: Sequence[tuple[str, str, str]],
                       operations: Sequence[str], object_selector: dict | None = None) -> dict:
        # Nothing listens on this port, so every call fails at once with "connection refused";
        # failurePolicy Fail turns that into the API server's own 500 InternalError.
        url = f"https://127.0.0.1:{free_port()}/canarist-fault"
        in_namespace = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}

        def webhook(hook: str, rules: list[dict], **extra: object) -> dict:
            return {"name": f"{hook}.{name}.canarist.dev", "clientConfig": {"url": url}, "rules": rules,
                    "failurePolicy": "Fail", "timeoutSeconds": 1, "sideEffects": "None",
                    "admissionReviewVersions": ["v1"], "namespaceSelector": in_namespace, **extra}

        return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": name, "labels": {"canarist.dev/test": "true"}},
                "webhooks": [
                    webhook("writes", [{"apiGroups": [group], "apiVersions": [version], "resources": [resource],
                                        "operations": list(operations), "scope": "Namespaced"}
                                       for group, version, resource in resources],
                            **({"objectSelector": object_selector} if object_selector else {})),
                    # A second webhook in the same object, matching only a labelled ConfigMap, tells
                    # us by a dry-run create whether the API server has this object in force yet,
                    # whatever the faulted resources are (the two arrive in one informer event).
                    webhook("probe", [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"],
                                       "operations": ["CREATE"], "scope": "Namespaced"}],
                            objectSelector={"matchLabels": {PROBE_LABEL: name}}),
                ]}

    def _probe_passes(self, namespace: str, name: str) -> bool:
        try:
            # sideEffects None: webhooks are called for dry-run requests, and nothing is stored.
            self._core.create_namespaced_config_map(namespace, {
                "metadata": {"name": f"{name}-probe", "labels": {PROBE_LABEL: name}}}, dry_run="All")
        except kubernetes.client.ApiException as exc:
            if exc.status == 500 and "failed calling webhook" in (exc.body or ""):
                return False
            raise
        return True


@contextmanager
def failing_writes(api: kubernetes.client.ApiClient, namespace: str,
                   resources: Sequence[tuple[str, str, str]] = (HTTPROUTES,),
                   operations: Sequence[str] = WRITES, timeout: float = 30,
                   object_selector: dict | None = None) -> Iterator[str]:
    """`ApiFaults(api).failing_writes(...)`, for one-off use."""
    with ApiFaults(api).failing_writes(namespace, resources, operations, timeout, object_selector) as name:
        yield name
