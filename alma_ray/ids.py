"""Identities derived from content: a prompt's id, and the sampling seed of a row.

Both are pure functions of text, so a rerun (or another machine) derives the same ids and seeds, and samples the
same responses.
"""

from __future__ import annotations

import hashlib


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def prompt_id(text: str) -> str:
    """Stable id of a prompt: a hash of its normalized text."""
    return hashlib.sha1(normalize(text).encode()).hexdigest()[:16]


def stable_seed(*parts: object) -> int:
    """A 31-bit sampling seed derived from the row's identity: reruns sample the same text."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little") >> 1
