"""The JPEGs an end-to-end benchmark decodes: one real photo at the sizes users meet."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from effnet_lite.errors import needs_extra
from effnet_lite.preprocess import load_image

# name → (width, height): a typical web photo, a camera frame, a 12-megapixel phone photo
SIZES = {"500x375": (500, 375), "640x480": (640, 480), "12MP": (4000, 3000)}


def source_photo(path: str | Path | None) -> Image.Image:
    """The photo to encode at each size: `path` (upright RGB; ImageError if unreadable),
    else scikit-image's coffee."""
    if path is not None:
        return load_image(path)
    try:
        from skimage import data
    except ImportError:
        print(needs_extra("effnet-bench", "the default photo (scikit-image's; or give --photo FILE)", "bench"),
              file=sys.stderr)
        raise SystemExit(2)
    return Image.fromarray(data.coffee())


def make_jpegs(photo: Image.Image, sizes=SIZES, quality: int = 90) -> dict[str, bytes]:
    """The photo resized (and, for 12 MP, upscaled with fine grain added so the file
    decodes like a camera JPEG rather than a smooth one) and encoded as JPEG."""
    out = {}
    rng = np.random.default_rng(0)
    for name, (w, h) in sizes.items():
        img = photo.resize((w, h), Image.BICUBIC)
        if w * h > photo.width * photo.height:
            arr = np.asarray(img).astype(np.int16) + rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        out[name] = buf.getvalue()
    return out


def decode(jpeg: bytes) -> Image.Image:
    """A plain full-size JPEG decode: the floor any pipeline pays."""
    img = Image.open(io.BytesIO(jpeg))
    img.load()
    return img


def decode_draft(jpeg: bytes, size: tuple[int, int]) -> Image.Image:
    """A JPEG decode at the smallest DCT scale (1/2, 1/4, 1/8) that stays >= `size`:
    what the runtime's draft path pays at least; for a 12 MP photo, mostly the
    single-threaded entropy decoding that no scale skips."""
    img = Image.open(io.BytesIO(jpeg))
    img.draft("RGB", size)
    img.load()
    return img
