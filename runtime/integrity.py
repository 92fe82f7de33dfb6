"""The digest our model files carry, stored in our metadata as "digest":"sha256:<hex>".

- .onnx: SHA-256 over the whole file with the digest's own 64 hex digits read as zeros, so a
  flipped byte anywhere is caught.
- .tflite: SHA-256 over the file's canonical content (tflite_content): the graph, the
  weights, our metadata and the input normalization, wherever a writer placed them. The
  standard TFLite metadata's labels and prose may be rewritten by Google's own tools
  (tflite-support's MetadataPopulator re-serializes the whole model to relabel it) and the
  file stays loadable, with the new labels; packed labels files carry their own CRC-32.
  A rewritten input normalization is told apart from other damage (see check()).
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
    return check(data)[0]


def check(data) -> tuple[str | None, tuple | None]:
    """(the verified digest or None, the normalization to use instead of the file's or None).

    The second is set for an integer-input .tflite file whose standard metadata normalization a
    metadata writer rewrote (tflite-support's MetadataWriter is given mean 0, std 1 for integer
    models): pixels go into such a model as they are, so nothing it answers has changed, and the
    normalization the digest covers is the one to use. In a float-input file the same rewrite
    would change the answers: IntegrityError saying which field changed, from what to what."""
    at = _locate(data)
    if at is None:
        return None, None
    stored = bytes(data[at:at + HEX_LENGTH])
    kept = None
    if _is_tflite(data):
        try:
            content = _content_digest(data)
        except ValueError as e:
            raise IntegrityError(f"model file is corrupt or was modified ({e})") from None
        ok = content.encode() == stored or _digest(data, at).encode() == stored   # (older exports)
        if not ok and (rewrite := _rewritten_normalization(data, stored)) is not None:
            kept = _judge_rewrite(*rewrite)
            ok = True
    else:
        ok = _digest(data, at).encode() == stored
    if not ok:
        raise IntegrityError("model file is corrupt or was modified (its SHA-256 digest does not match)")
    return "sha256:" + stored.decode(), kept


def _rewritten_normalization(data, stored: bytes):
    """(sealed, found, integer input) when the file matches its digest with its variant's
    normalization in place of the one it holds, else None."""
    import json

    from .tflite_metadata import read_metadata
    from .variants import QUANTIZED_MEAN, VARIANTS, pixel_normalization
    try:
        own = json.loads(read_metadata(data)[METADATA_NAME])
        variant = VARIANTS[own["variant"]]
        found_mean, found_std, integer = tflite_content.input_normalization(data)
        sealed = pixel_normalization(QUANTIZED_MEAN if own.get("precision") == "int8" else variant.mean, variant.std)
        if tflite_content.digest(data, METADATA_NAME, KEY, normalization=sealed).encode() != stored:
            return None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return sealed, (found_mean, found_std), integer


def _judge_rewrite(sealed: tuple, found: tuple, integer: bool) -> tuple:
    if integer:
        return sealed
    show = lambda values: ", ".join(f"{v:g}" for v in values) if len(set(values)) > 1 else f"{values[0]:g}"  # noqa: E731
    (m0, s0), (m1, s1) = sealed, found
    raise IntegrityError(
        f"its input normalization was rewritten: the standard TFLite metadata says mean {show(m1) if m1 else '-'}, "
        f"std {show(s1) if s1 else '-'} where the file was made with mean {show(m0)}, std {show(s0)} (a metadata "
        "writer such as tflite-support's MetadataWriter or MetadataPopulator does this). Its graph and weights "
        "are intact, but this float-input model would be given other values and answer differently: write "
        f"mean [{show(m0)}], std [{show(s0)}] again, or export it again")
