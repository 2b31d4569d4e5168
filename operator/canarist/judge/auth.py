"""Who may talk to the judge: Kubernetes ServiceAccount tokens, verified by TokenReview.

Callers send `Authorization: Bearer <token>`, a projected ServiceAccount token issued for the
judge's own audience (`canarist-judge` by default; the kubelet rotates it in the pod's volume).
The judge asks the API server who the token belongs to (a TokenReview with that audience, so a
token minted for anything else is refused) and remembers the answer for at most `cache_ttl`
seconds, and never past the token's own `exp` (read from the token without verifying it: the API
server has verified it). A failed review is remembered for a few seconds too, so a flood of bad
tokens costs the API server one review each per few seconds, not one per request.

What an identity may do (`Policy`):

- POST /v1/samples: any ServiceAccount, for releases of its own namespace only; a batch with one
  sample of another namespace is refused whole (403) and nothing of it is stored.
- GET /v1/verdict and /v1/pairs: a ServiceAccount for its own namespace's releases, and the
  `readers` (the operator) for any.
- GET /v1/export and DELETE /v1/releases/...: the `admins` only: the export holds users' texts,
  and the deletion destroys a release's evidence.
- /healthz and /metrics: anyone who reaches the port (the chart's NetworkPolicy decides who).

An identity in `readers`/`admins` is a username (`system:serviceaccount:<namespace>:<name>`,
or `<namespace>/<name>` for short) or `group:<group>`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

log = logging.getLogger("canarist.judge.auth")

DEFAULT_AUDIENCE = "canarist-judge"
SA_PREFIX = "system:serviceaccount:"
MAX_TOKEN_BYTES = 16 * 1024


@dataclass(frozen=True)
class Identity:
    username: str
    groups: tuple[str, ...] = ()

    @property
    def namespace(self) -> str | None:
        """The ServiceAccount's namespace; None for any other kind of user."""
        if not self.username.startswith(SA_PREFIX):
            return None
        namespace, _, name = self.username[len(SA_PREFIX):].partition(":")
        return namespace if namespace and name else None


REQUEST_IDENTITY = web.RequestKey("canarist_identity", Identity)


class AuthUnavailable(Exception):
    """The API server could not be asked (down, timed out, forbidden): answered 503, never 401."""


class TokenReviewer(Protocol):
    def review(self, token: str, audience: str) -> Identity | None:
        """The token's identity if the API server vouches for it for `audience`, else None."""


class KubernetesTokenReviewer:
    """TokenReview through the Kubernetes API, as the judge's own ServiceAccount (or a kubeconfig)."""

    def __init__(self, kubeconfig: str | None = None, timeout: float = 5.0) -> None:
        import kubernetes  # only a judge with authentication needs the client

        if kubeconfig:
            api = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        else:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            api = kubernetes.client.ApiClient(configuration)
        self._api = kubernetes.client.AuthenticationV1Api(api)
        self._exception = kubernetes.client.ApiException
        self.timeout = timeout

    def review(self, token: str, audience: str) -> Identity | None:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [audience]}}
        try:
            result = self._api.create_token_review(body, _request_timeout=self.timeout)
        except self._exception as exc:
            raise AuthUnavailable(f"TokenReview failed: HTTP {exc.status} {exc.reason}") from None
        except Exception as exc:  # connection refused, timeout: the API server is unreachable
            raise AuthUnavailable(f"TokenReview failed: {type(exc).__name__}: {exc}") from None
        status = result.status
        if not status or not status.authenticated or audience not in (status.audiences or [audience]):
            return None
        user = status.user
        return Identity(user.username, tuple(user.groups or ()))


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, unverified (only to bound how long a review is remembered)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


class Authenticator:
    """Reviews bearer tokens with a bounded cache and bounded concurrency, off the event loop."""

    def __init__(self, reviewer: TokenReviewer, audience: str = DEFAULT_AUDIENCE, *, cache_ttl: float = 60.0,
                 negative_ttl: float = 5.0, cache_size: int = 10_000, concurrency: int = 8,
                 clock: Callable[[], float] = time.time) -> None:
        self.reviewer, self.audience = reviewer, audience
        self.cache_ttl, self.negative_ttl, self.cache_size = cache_ttl, negative_ttl, cache_size
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, Identity | None]] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self.reviews = 0  # TokenReviews sent to the API server

    async def identify(self, token: str) -> Identity | None:
        if not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            return None  # not a JWT: no ServiceAccount token looks like this
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > now:
                self._cache.move_to_end(key)
                return cached[1]
            del self._cache[key]
        pending = self._in_flight.get(key)
        if pending is not None:  # the same token under review already: one review for all callers
            return await asyncio.shield(pending)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            async with self._slots:
                self.reviews += 1
                identity = await asyncio.to_thread(self.reviewer.review, token, self.audience)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            future.set_result(identity)
            self._remember(key, token, identity)
            return identity
        finally:
            del self._in_flight[key]

    def _remember(self, key: str, token: str, identity: Identity | None) -> None:
        now = self.clock()
        until = now + (self.cache_ttl if identity is not None else self.negative_ttl)
        expiry = token_expiry(token)
        if identity is not None and expiry is not None:
            until = min(until, expiry)
        if until <= now:
            return
        self._cache[key] = (until, identity)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def _parse_names(names: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    users, groups = set(), set()
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name.startswith("group:"):
            groups.add(name[len("group:"):])
        elif "/" in name and ":" not in name:
            namespace, _, account = name.partition("/")
            users.add(f"{SA_PREFIX}{namespace}:{account}")
        else:
            users.add(name)
    return frozenset(users), frozenset(groups)


class Policy:
    """Who may do what (the module docstring); pure, so the rules are tested without a cluster."""

    def __init__(self, readers: Iterable[str] = (), admins: Iterable[str] = ()) -> None:
        self.readers = _parse_names(readers)
        self.admins = _parse_names(admins)

    @staticmethod
    def _member(identity: Identity, names: tuple[frozenset[str], frozenset[str]]) -> bool:
        users, groups = names
        return identity.username in users or any(g in groups for g in identity.groups)

    def is_admin(self, identity: Identity) -> bool:
        return self._member(identity, self.admins)

    def may_read(self, identity: Identity, release: str | None) -> bool:
        if self._member(identity, self.readers) or self.is_admin(identity):
            return True
        return release is not None and identity.namespace is not None and \
            release.partition("/")[0] == identity.namespace

    @staticmethod
    def may_report(identity: Identity, release: str) -> bool:
        return identity.namespace is not None and release.partition("/")[0] == identity.namespace


def _refuse(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="canarist-judge"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


_OPEN = ("/healthz", "/metrics")
_READS = ("/v1/verdict", "/v1/pairs")
_ADMIN = ("/v1/export", "/v1/releases/")


def auth_middleware(authenticator: Authenticator, policy: Policy):
    """aiohttp middleware: 401 without a valid token, 403 outside the identity's rights.

    Writes are checked per sample by the samples handler (`check_reporter`), which has the parsed
    batch; everything else is decided here, before any handler runs.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        path = request.path
        if path in _OPEN:
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _refuse(401, "Authorization: send 'Bearer <token>' with a ServiceAccount token for the "
                                f"audience {authenticator.audience!r} (a projected serviceAccountToken volume)")
        try:
            identity = await authenticator.identify(token.strip())
        except AuthUnavailable as exc:
            log.warning("cannot verify a token now: %s", exc)
            return web.json_response({"error": f"Authorization: the token cannot be verified now ({exc}); "
                                               "retry later"}, status=503, headers={"Retry-After": "5"})
        if identity is None:
            return _refuse(401, "Authorization: the token is not valid for the audience "
                                f"{authenticator.audience!r} (expired, revoked, or issued for another audience)")
        if path.startswith(_ADMIN) and not policy.is_admin(identity):
            return _refuse(403, f"{identity.username} may not use {path}: it holds users' texts or deletes "
                                "evidence; add the identity to the judge's admins to allow it")
        if path in _READS and not policy.may_read(identity, request.query.get("release")):
            return _refuse(403, f"release: {identity.username} may read verdicts only of releases in its own "
                                "namespace; add the identity to the judge's readers to read any")
        request[REQUEST_IDENTITY] = identity
        return await handler(request)

    return middleware


def check_reporter(request: web.Request, releases: Iterable[str]) -> str | None:
    """Why the request's identity may not report samples for these releases, or None if it may."""
    identity: Identity | None = request.get(REQUEST_IDENTITY)
    if identity is None:
        return None  # authentication is off
    foreign = sorted({r for r in releases if not Policy.may_report(identity, r)})
    if not foreign:
        return None
    return (f"release: {identity.username} may report only for releases in its own namespace "
            f"({identity.namespace or 'none: not a ServiceAccount'}), not {', '.join(foreign[:5])}"
            + (" ..." if len(foreign) > 5 else "") + "; nothing of this batch was stored")

