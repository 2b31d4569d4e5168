"""One GET to the judge service, with the error handling every judge gate shares.

The operator authenticates to a judge with authentication on (canarist.judge.auth) with its own
projected ServiceAccount token (`CANARIST_JUDGE_TOKEN_FILE`, default
/var/run/secrets/canarist.dev/judge/token when it exists), and only to the judges listed in
`CANARIST_JUDGE_TRUSTED_URLS` (comma-separated base URLs; the chart lists its own judge): a
judge URL comes from a CanaryRelease's spec, and anyone who may write one must not be able to
collect the operator's token with it.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import requests

ENV_TOKEN_FILE = "CANARIST_JUDGE_TOKEN_FILE"
ENV_TRUSTED_URLS = "CANARIST_JUDGE_TRUSTED_URLS"
DEFAULT_TOKEN_FILE = "/var/run/secrets/canarist.dev/judge/token"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url.strip())
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def auth_headers(base_url: str) -> dict[str, str]:
    """`Authorization: Bearer <the operator's token>` for a trusted judge; nothing for any other."""
    trusted = {_origin(url) for url in os.environ.get(ENV_TRUSTED_URLS, "").split(",") if url.strip()}
    if _origin(base_url) not in trusted:
        return {}
    path = os.environ.get(ENV_TOKEN_FILE) or DEFAULT_TOKEN_FILE
    try:
        with open(path, encoding="utf-8") as handle:  # read each time: the kubelet rotates it
            token = handle.read().strip()
    except OSError:
        return {}
    return {"Authorization": f"Bearer {token}"} if token else {}


def get_json(session: requests.Session, base_url: str, path: str, params: dict[str, str], timeout: float,
             error: type[Exception], special: dict[int, Exception] | None = None) -> object:
    """The parsed JSON body of a 200 answer; otherwise raises `error` (or the exception `special`
    maps the status code to). The body of a failed answer is never copied into a message: the URL
    comes from the spec, the body from anywhere."""
    try:
        response = session.get(f"{base_url.rstrip('/')}{path}", params=params, timeout=timeout,
                               headers=auth_headers(base_url))
    except requests.RequestException as exc:
        raise error(f"judge unreachable at {base_url}: {type(exc).__name__}") from exc
    if special and response.status_code in special:
        raise special[response.status_code]
    if response.status_code in (401, 403):
        raise error(f"judge answered HTTP {response.status_code} {response.reason}: the operator authenticates "
                    f"only to the judges in {ENV_TRUSTED_URLS} (the chart's judge.trustedURLs), with its token "
                    f"from {ENV_TOKEN_FILE}, and must be one of the judge's readers")
    if response.status_code != 200:
        raise error(f"judge answered HTTP {response.status_code} {response.reason}")
    try:
        return response.json()
    except ValueError as exc:
        raise error("judge answered something that is not JSON") from exc
