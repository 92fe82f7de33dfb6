"""The digest our model files carry, stored in our metadata as "digest":"sha256:<hex>".

- .onnx: SHA-256 over the whole file with the digest's own 64 hex digits read as zeros, so a
  flipped byte anywhere is caught.
- .tflite: SHA-256 over the file's canonical content (tflite_content): the graph, the
  weights, our metadata and the input normalization, wherever a writer placed them. The
  standard TFLite metadata's labels and prose may be rewritten by Google's own tools
  (tflite-support's MetadataPopulator re-serializes the whole model to relabel it) and the
  file stays loadable, with the new labels; packed labels files carry their own CRC-32.
  Files exported before this rule hold a whole-file digest, which is still accepted.

The exporter writes the placeholder, hashes, then patches the value in place (same length,
so no offset moves). The runtime checks it before it trusts anything the file says. Files
others made have no digest; that is reported, not an error.
"""
from __future__ import annotations

import hashlib

from . import tflite_content
from .metadata import METADATA_NAME

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


def _is_tflite(data) -> bool:
    return bytes(data[4:8]) == b"TFL3"


def _content_digest(data) -> str:
    return tflite_content.digest(data, METADATA_NAME, KEY)


def seal(blob: bytes) -> bytes:
    """Fill in the placeholder digest of a freshly serialized model."""
    at = _locate(blob)
    if at is None or blob[at:at + HEX_LENGTH] != b"0" * HEX_LENGTH:
        raise ValueError("the serialized model holds no digest placeholder")
    value = _content_digest(blob) if _is_tflite(blob) else _digest(blob, at)
    return blob[:at] + value.encode() + blob[at + HEX_LENGTH:]


def verify(data) -> str | None:
    """The file's verified digest ("sha256:…"), or None when it carries none.
    Raises IntegrityError when the content does not match."""
    at = _locate(data)
    if at is None:
        return None
    stored = bytes(data[at:at + HEX_LENGTH])
    if _is_tflite(data):
        try:
            content = _content_digest(data)
        except ValueError as e:
            raise IntegrityError(f"model file is corrupt or was modified ({e})") from None
        ok = content.encode() == stored or _digest(data, at).encode() == stored   # (older exports)
    else:
        ok = _digest(data, at).encode() == stored
    if not ok:
        raise IntegrityError("model file is corrupt or was modified (its SHA-256 digest does not match)")
    return "sha256:" + stored.decode()
