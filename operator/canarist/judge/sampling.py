"""Consistent sampling by input: the same input is sampled (or not) for every variant.

docs/judge-protocol.md: `fingerprint = sha256(normalized request)` in hex, where normalized means
stripped with every run of white space collapsed to one space; a sample is sampled when
`int(fingerprint[:16], 16) / 2**64 < sampleRate`, evaluated exactly (as
`int(fingerprint[:16], 16) < sampleRate * 2**64`: Python compares int and float exactly, and the
float division would round the largest points up to 1.0, so rate 1 would miss a few inputs).
Standard library only.
"""

from __future__ import annotations

import hashlib

__all__ = ["normalize", "fingerprint", "sample_point", "is_sampled"]


def normalize(text: str) -> str:
    """Strip the text and collapse every run of white space (Unicode's, as `str.split`) to one space."""
    return " ".join(text.split())


def fingerprint(request: str) -> str:
    """sha256 of the normalized request (UTF-8), as 64 lowercase hex digits."""
    return hashlib.sha256(normalize(request).encode("utf-8")).hexdigest()


def sample_point(fp: str) -> float:
    """Where the fingerprint falls in [0, 1]: its first 64 bits as a fraction of 2**64 (a float, rounded)."""
    return _point(fp) / 2**64


def _point(fp: str) -> int:
    if len(fp) < 16:
        raise ValueError(f"fingerprint must have at least 16 hex digits, got {fp!r}")
    return int(fp[:16], 16)


def is_sampled(fp: str, sample_rate: float) -> bool:
    """True when the input with this fingerprint is sent for scoring at this sample rate.

    Depends only on the input: primary's and canary's answers to it are sampled together, and
    raising the rate only adds inputs (every input sampled at rate r stays sampled above r).
    """
    return _point(fp) < sample_rate * 2**64  # exact: int < float compares the true values
