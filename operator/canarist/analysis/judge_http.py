"""One GET to the judge service, with the error handling every judge gate shares."""

from __future__ import annotations

import requests


def get_json(session: requests.Session, base_url: str, path: str, params: dict[str, str], timeout: float,
             error: type[Exception], special: dict[int, Exception] | None = None) -> object:
    """The parsed JSON body of a 200 answer; otherwise raises `error` (or the exception `special`
    maps the status code to). The body of a failed answer is never copied into a message: the URL
    comes from the spec, the body from anywhere."""
    try:
        response = session.get(f"{base_url.rstrip('/')}{path}", params=params, timeout=timeout)
    except requests.RequestException as exc:
        raise error(f"judge unreachable at {base_url}: {type(exc).__name__}") from exc
    if special and response.status_code in special:
        raise special[response.status_code]
    if response.status_code != 200:
        raise error(f"judge answered HTTP {response.status_code} {response.reason}")
    try:
        return response.json()
    except ValueError as exc:
        raise error("judge answered something that is not JSON") from exc
