"""The digest our model files carry: SHA-256 over the whole file with the digest's own 64 hex
digits read as zeros, stored in our metadata as "digest":"sha256:<hex>".

The exporter writes the placeholder, hashes, then patches the value in place (same length,
so no offset moves). The runtime checks it on the raw bytes before any parser sees them, so a
flipped byte anywhere - weights, graph, metadata, packed labels - is caught. Files others made
have no digest; that is reported, not an error.
"""
from __future__ import annotations

import hashlib

KEY = b'"digest":"sha256:'
HEX_LENGTH = 64
PLACEHOLDER = "sha256:" + "0" * HEX_LENGTH


class IntegrityError(ValueError):
    pass


def _digest(data, at: int) -> str:
    """SHA-256 of `data` with the HEX_LENGTH bytes at `at` taken as ASCII zeros."""
    view = memoryview(data)
    h = hashlib.sha256(view[:at])
    h.update(b"0" * HEX_LENGTH)
    h.update(view[at + HEX_LENGTH:])
    return h.hexdigest()


def _locate(data) -> int | None:
    """Offset of the digest's hex digits, None when the file has no digest."""
    first = data.find(KEY)
    if first < 0:
        return None
    if data.find(KEY, first + 1) >= 0:
        raise IntegrityError("model file is corrupt or was modified (it holds two digests)")
    return first + len(KEY)


def seal(blob: bytes) -> bytes:
    """Fill in the placeholder digest of a freshly serialized model."""
    at = _locate(blob)
    if at is None or blob[at:at + HEX_LENGTH] != b"0" * HEX_LENGTH:
        raise ValueError("the serialized model holds no digest placeholder")
    return blob[:at] + _digest(blob, at).encode() + blob[at + HEX_LENGTH:]


def verify(data) -> str | None:
    """The file's verified digest ("sha256:…"), or None when it carries none.
    Raises IntegrityError when the content does not match."""
    at = _locate(data)
    if at is None:
        return None
    stored = bytes(data[at:at + HEX_LENGTH])
    if _digest(data, at).encode() != stored:
        raise IntegrityError("model file is corrupt or was modified (its SHA-256 digest does not match)")
    return "sha256:" + stored.decode()
