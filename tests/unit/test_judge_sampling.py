"""Fingerprints and the sampling decision of docs/judge-protocol.md."""

from __future__ import annotations

import hashlib

import pytest

from canarist.judge.sampling import fingerprint, is_sampled, normalize, sample_point


@pytest.mark.parametrize("text, expected", [
    ("What is 17 + 25?", "What is 17 + 25?"),
    ("  What   is\t17 +\n\n25?  ", "What is 17 + 25?"),
    ("\u00a0a\u2003b\u3000", "a b"),          # Unicode white space counts too
    ("", ""),
    ("   \n\t ", ""),
])
def test_normalize_strips_and_collapses_white_space(text, expected):
    assert normalize(text) == expected


def test_fingerprint_is_sha256_hex_of_the_normalized_request():
    assert fingerprint("What is 17 + 25?") == hashlib.sha256(b"What is 17 + 25?").hexdigest()
    assert fingerprint(" What is  17 + 25?\n") == fingerprint("What is 17 + 25?")
    assert fingerprint("what is 17 + 25?") != fingerprint("What is 17 + 25?"), "case matters"
    assert fingerprint("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    fp = fingerprint("héllo ✓")
    assert fp == hashlib.sha256("héllo ✓".encode()).hexdigest() and len(fp) == 64


def test_sample_point_is_the_first_64_bits_as_a_fraction():
    assert sample_point("0" * 64) == 0.0
    assert sample_point("8" + "0" * 63) == 0.5
    assert sample_point("4000000000000000ffff") == 0.25
    assert sample_point("f" * 16) == 1.0, "the float rounds up; the decision itself is exact"
    with pytest.raises(ValueError):
        sample_point("abc")


def test_decision_by_threshold():
    half = "8" + "0" * 63
    assert not is_sampled(half, 0.5), "the comparison is strict: point < rate"
    assert is_sampled(half, 0.5000001)
    assert is_sampled("0" * 64, 1e-9)
    assert not is_sampled("0" * 64, 0.0), "rate 0 samples nothing"
    assert is_sampled("f" * 64, 1.0), "rate 1 samples everything"
    assert not is_sampled("ffffffffffffff00" + "0" * 48, 1 - 2**-53), "exact, not rounded"
    assert is_sampled("fffffffffffff7ff" + "0" * 48, 1 - 2**-53)


def test_decision_depends_only_on_the_input_and_is_monotone_in_the_rate():
    inputs = [f"question number {i}" for i in range(2000)]
    at_10 = {q for q in inputs if is_sampled(fingerprint(q), 0.1)}
    at_30 = {q for q in inputs if is_sampled(fingerprint(q), 0.3)}
    assert at_10 <= at_30
    assert 150 < len(at_10) < 250 and 500 < len(at_30) < 700   # about the rate
    # the same input, differently spaced (as two variants' clients might send it), agrees
    assert all(is_sampled(fingerprint(q), 0.1) == is_sampled(fingerprint(f"  {q}  "), 0.1) for q in inputs)
