"""What a revision changes against another: said in status, in the RolloutStarted Event and by the CLI."""

from __future__ import annotations

from canarist.api.status import TrackedConfig


def _short(digest: str | None) -> str:
    return digest[:8] if digest else "absent"


def changes(template_before: str | None, template_after: str | None, before: list[TrackedConfig] | None,
            after: list[TrackedConfig] | None) -> list[str]:
    """Names and short hashes only: never content (a Secret's hash is keyed, see kube.configtracking)."""
    out = []
    if template_before and template_after and template_before != template_after:
        out.append(f"pod template changed ({_short(template_before)} -> {_short(template_after)})")
    if before is None or after is None:
        return out
    old = {(t.kind, t.name): t.hash for t in before}
    for t in after:
        key = (t.kind, t.name)
        if key not in old:
            out.append(f"{t.kind} {t.name!r} is now referenced ({_short(t.hash)})")
        elif old[key] != t.hash:
            out.append(f"{t.kind} {t.name!r} changed ({_short(old[key])} -> {_short(t.hash)})")
    for kind, name in sorted(set(old) - {(t.kind, t.name) for t in after}):
        out.append(f"{kind} {name!r} is no longer referenced")
    return out
