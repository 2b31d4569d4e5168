"""What people ask of a release through its annotations (kubectl canarist promote, abort, ...)."""

from __future__ import annotations

from canarist.engine import Requests

ANNOTATION_PREFIX = "canarist.dev/"


def read_requests(body: dict) -> Requests:
    annotations = body["metadata"].get("annotations") or {}

    def token(action: str) -> str | None:
        value = annotations.get(ANNOTATION_PREFIX + action)
        return value or None

    return Requests(abort=token("abort"), promote=token("promote"), retry=token("retry"),
                    paused=annotations.get(ANNOTATION_PREFIX + "paused", "").lower() in ("true", "1", "yes"))
