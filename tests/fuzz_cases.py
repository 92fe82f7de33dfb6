"""Seeded, deterministic hostile inputs: damaged model files and images (see test_fuzz.py)."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from effnet_lite import integrity
from effnet_lite.metadata import METADATA_NAME, ModelMetadata

# ---- model files ------------------------------------------------------------------


def _flip(data: bytes, rng, lo: int, hi: int, count: int) -> bytes:
    b = bytearray(data)
    for at in rng.integers(lo, max(hi, lo + 1), count):
        b[int(at)] ^= int(rng.integers(1, 256))
    return bytes(b)


def model_mutations(name: str, data: bytes, rng, n: int, ours: bool):
    """(case id, bytes, must_fail) for truncations and byte flips in each region of a file.
    Every byte of our files is under the digest, so any change to one must be refused."""
    size = len(data)
    meta_at = max(data.find(b'"format"'), 0)
    regions = {"structure": (0, min(4096, size)), "metadata": (meta_at, min(meta_at + 400, size)),
               "weights": (size // 4, 3 * size // 4), "tail": (max(size - 2048, 0), size),
               "anywhere": (0, size)}
    for i in range(n):
        cut = int(rng.integers(1, size))
        yield f"{name}-truncated-{cut}", data[:cut], ours
    for region, (lo, hi) in regions.items():
        for i in range(n):
            count = int(rng.choice([1, 8, 1000]))
            yield f"{name}-flip-{region}-{count}-{i}", _flip(data, rng, lo, hi, count), ours


def random_behind_header(rng, n: int):
    for i in range(n):
        body = rng.integers(0, 256, int(rng.integers(8, 200_000)), dtype=np.uint8).tobytes()
        yield f"random-behind-tfl3-{i}", struct.pack("<I", int(rng.integers(0, 1 << 20))) + b"TFL3" + body


HOSTILE_VALUES = {
    "interpolation": ["cubic", 3, None], "std": [[0, 0, 0], [0.5], "0.5", [float("nan")] * 3],
    "crop_pct": [5, 0, 1e-6, float("nan"), "0.9", None], "mean": [[], "x", [1e9] * 3],
    "variant": [["lite0"], 7, {"a": 1}], "labels": [3, ["x"] * 999, [1] * 1000, "abc"],
    "output": ["probabilities", "maybe"], "precision": ["int4"], "input_size": [10 ** 9, -1, 3.5],
    "untrained": ["no"], "calibration": [[1, 2]], "version": [99, "1"],
    # facts the model's tensors also state: a contradiction is refused, not resolved
    "layout": ["NHWC"], "input_dtype": ["int8"], "input_scale": [0.01, 0.0], "input_zero_point": [5],
}
# what the refusal names, where it is not the field itself
NAMED_BY = {"labels": ("'labels'", "classes but the model outputs"),
            "output": ("'output'", "not probabilities"),
            "input_scale": ("'input_scale'", "input encoding"),
            "input_zero_point": ("'input_zero_point'", "input encoding"),
            "version": ("'version'", "metadata version"),
            "input_dtype": ("'input_dtype'", "'input_zero_point'")}   # the two must fit together


def metadata_mutations(onnx_path: Path):
    """Our ONNX file (its whole JSON in metadata_props) with one field set to a hostile
    value, or the document nested 7,000 deep, re-sealed so the digest passes: each must be
    refused naming the problem."""
    import onnx
    model = onnx.load(str(onnx_path))
    prop = next(p for p in model.metadata_props if p.key == METADATA_NAME)
    doc = json.loads(prop.value)
    cases = [(f"{k}={json.dumps(v)[:30]}", {**doc, k: v}) for k, values in HOSTILE_VALUES.items()
             for v in values]
    cases.append(("nested-7000", "[" * 7000 + "]" * 7000))
    cases.append(("no-digest", {**doc, "digest": ""}))
    for case_id, new in cases:
        text = new if isinstance(new, str) else json.dumps(new, separators=(",", ":"))
        if isinstance(new, dict) and new.get("digest"):
            text = text.replace(doc["digest"], integrity.PLACEHOLDER)
        prop.value = text
        blob = model.SerializeToString()
        if integrity.PLACEHOLDER.encode() in blob:
            blob = integrity.seal(blob)
        yield f"meta-{case_id}", blob
    prop.value = json.dumps(doc, separators=(",", ":"))


def invalid_utf8_onnx(onnx_path: Path) -> bytes:
    """Another tool's ONNX file (none of our metadata) with a metadata_props value that is
    not UTF-8 (protobuf stores the bytes as given)."""
    import onnx
    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    model.metadata_props.add(key="note", value="x")
    blob = model.SerializeToString()
    return blob.replace(b"\x12\x01x", b"\x12\x01\xff", 1)


# ---- images -----------------------------------------------------------------------

FORMATS = {  # name: (Pillow format, mode, save options)
    "baseline.jpg": ("JPEG", "RGB", {"quality": 90}),
    "progressive.jpg": ("JPEG", "RGB", {"quality": 90, "progressive": True}),
    "rgb.png": ("PNG", "RGB", {}), "rgba.png": ("PNG", "RGBA", {}), "palette.png": ("PNG", "P", {}),
    "16bit.png": ("PNG", "I;16", {}), "anim.gif": ("GIF", "P", {}), "lossy.webp": ("WEBP", "RGB", {}),
    "photo.tiff": ("TIFF", "RGB", {"compression": "tiff_lzw"}), "photo.bmp": ("BMP", "RGB", {}),
}


def image_bases(photo: np.ndarray) -> dict[str, bytes]:
    img = Image.fromarray(photo).resize((160, 120))
    out = {}
    for name, (fmt, mode, opts) in FORMATS.items():
        buf = io.BytesIO()
        if mode == "I;16":
            im = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
        else:
            im = img.convert(mode)
        im.save(buf, fmt, **opts)
        out[name] = buf.getvalue()
    return out


def image_mutations(bases: dict[str, bytes], rng, n: int):
    for name, data in bases.items():
        for i in range(n):
            cut = int(rng.integers(1, len(data)))
            yield f"{name}-truncated-{cut}", data[:cut]
            yield f"{name}-flip-{i}", _flip(data, rng, 0, len(data), int(rng.choice([1, 4, 32])))
            yield f"{name}-header-flip-{i}", _flip(data, rng, 0, min(64, len(data)), 2)


def _png(width: int, height: int, rows: bytes | None = None, level: int = 9) -> bytes:
    """A greyscale PNG with any declared size; `rows` the raw scanlines (None: zeros)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    if rows is None:
        z, line, parts = zlib.compressobj(level), b"\0" * (width + 1), []
        for _ in range(height // 4096):
            parts.append(z.compress(line * 4096))
        parts.append(z.compress(line * (height % 4096)))
        compressed = b"".join(parts) + z.flush()
    else:
        compressed = zlib.compress(rows, level)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", compressed) + chunk(b"IEND", b""))


def _jpeg_with_exif(photo: np.ndarray, exif: bytes) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo).resize((64, 48)).save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def special_images(photo: np.ndarray) -> dict[str, bytes]:
    """Degenerate sizes, decompression bombs, hostile EXIF."""
    gradient = bytes(b for row in range(1) for b in (b"\0" + bytes(range(256)) * 79)[:20001])
    exif_bad_orientation = Image.Exif()
    exif_bad_orientation[0x0112] = 9
    exif_huge = b"Exif\0\0MM\0*\0\0\0\x08" + b"\xff\xff" + b"\0" * 12
    return {
        "wide-20000x1.png": _png(20000, 1, gradient),
        "tall-1x100000.png": _png(1, 100_000),
        "tall-1x80000000-declared.png": _png(1, 80_000_000),
        "bomb-30000x30000.png": _png(30_000, 30_000, b"", 1),
        "bomb-100000x100000.png": _png(100_000, 100_000, b"", 1),
        "one-pixel.png": _png(1, 1, b"\0\x80"),
        "exif-orientation-9.jpg": _jpeg_with_exif(photo, exif_bad_orientation.tobytes()),
        "exif-huge-ifd.jpg": _jpeg_with_exif(photo, exif_huge),
        "exif-truncated.jpg": _jpeg_with_exif(photo, b"Exif\0\0II*\0\x08\0\0\0\x05"),
        "empty.jpg": b"",
        "text.png": b"this is not an image\n",
    }
