"""Image loading and the reference evaluation transform, with Pillow and numpy only.

resize shorter side to floor(size / crop_pct) (longer side scaled and truncated) →
centre crop size x size → (float models) (x/255 - mean) / std.
Quantized models with pixel-exact input parameters take the uint8 crop as is.
Two ways to the crop: `exact` (full decode, whole-frame resize: bit-identical to the
reference) and the default fast path (JPEG draft decoding for big photos, and only the
crop resampled: within a level or two, on up to a few pixels in 1,000).
"""
from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import ImageError, first_line

INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
# Pillow's own decompression-bomb threshold; above it we refuse with a clear error
# instead of a warning followed by a multi-gigabyte decode.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class PreprocessConfig:
    size: int
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                             f"not {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], not {self.crop_pct}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(
                math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise ValueError(f"mean and std must be 3 finite values each, std > 0 "
                             f"(got {self.mean}, {self.std})")

    @classmethod
    def for_variant(cls, variant, size: int | None = None) -> "PreprocessConfig":
        """The reference transform of a `runtime.variants.Variant` (at `size`, default its own)."""
        return cls(int(size or variant.input_size), variant.crop_pct, variant.interpolation,
                   tuple(variant.mean), tuple(variant.std))

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.size / self.crop_pct))

    def resized_dims(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) after scaling the shorter side to `resize_size` (as torchvision's Resize(int))."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)


_ORIENTATION = 0x0112
# EXIF orientation → the transpose that makes the image upright (as ImageOps.exif_transpose,
# which also copies the image even when nothing changes: 1.5 ms for a 640x480 photo)
_TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    return img.transpose(_TRANSPOSES[orientation]) if orientation in _TRANSPOSES else img


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    name = getattr(source, "name", None)      # an open file
    return name if isinstance(name, str) else f"<{type(source).__name__}>"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit samples: keep the top 8 bits (convert("RGB") would clip, not scale).
        a = np.asarray(img).astype(np.uint32) >> 8
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
            img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


ACCEPTED = "a path, bytes, a binary file object, a PIL image or an HxWx3 uint8 array"
MAX_IMAGE_BYTES = 512 << 20     # a file object is read whole: bound what that may cost


def load_image(source, config: PreprocessConfig | None = None, draft: bool = True,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open `source` (see ACCEPTED) as an upright RGB image.

    With `config` and `draft`, large JPEGs decode at a DCT-domain reduced size that
    stays >= the resize target (much faster, barely different; see README).
    """
    return _open(source, config, draft, max_pixels)[0]


def _check_size(name: str, w: int, h: int, config: PreprocessConfig | None, max_pixels: int) -> None:
    """Refuse, before any decoding, what cannot be classified within bounded memory."""
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: empty image ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"{name}: image is {w}x{h} ({w * h / 1e6:.3g} megapixels), over the "
                         f"{max_pixels / 1e6:.3g}-megapixel safety limit (decompression-bomb guard)")
    if config is not None:
        tw, th = config.resized_dims(w, h)
        if tw * th > max_pixels:   # the reference resize of a sliver: gigabytes, and no photo
            raise ImageError(f"{name}: image is {w}x{h}, too elongated to classify (the reference "
                             f"resize would make it {tw}x{th})")


# What Pillow's decoders raise on damaged data (OSError: truncated or broken streams,
# SyntaxError: some plugins' "broken file", zlib.error and struct.error from the
# formats' own parsing, the rest from malformed tables). MemoryError, TypeError and the like
# are not caught: a bug stays a bug, and a lack of memory is not a damaged photo.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError,
                 struct.error, zlib.error)


def _open(source, config, draft, max_pixels) -> tuple[Image.Image, tuple[int, int]]:
    """(upright RGB image, its upright size before any draft reduction)."""
    name = _describe(source)
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise ImageError(f"{name}: expected an HxWx3 uint8 RGB array, got "
                             f"{source.dtype} {source.shape}")
        _check_size(name, source.shape[1], source.shape[0], config, max_pixels)
        img = Image.fromarray(source, "RGB")
        return img, img.size
    if isinstance(source, Image.Image):
        _check_size(name, *source.size, config, max_pixels)
        try:
            source.load()       # a lazily opened file decodes here: its errors are ours to report
            img = _to_rgb(_upright(source, source.getexif().get(_ORIENTATION, 1)))
        except DECODE_ERRORS as e:
            raise ImageError(f"{name}: cannot decode image ({first_line(e)})") from None
        return img, img.size
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) and not hasattr(source, "read"):
        raise TypeError(f"image must be {ACCEPTED}, not {type(source).__name__}")
    try:
        with warnings.catch_warnings():     # our own limit below replaces Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(_readable(source, name))
        w, h = img.size
        _check_size(name, w, h, config, max_pixels)   # before getexif, which loads a PNG
        orientation = img.getexif().get(_ORIENTATION, 1)
        swapped = orientation in (5, 6, 7, 8)       # these orientations swap the axes
        upright = (h, w) if swapped else (w, h)
        if draft and config is not None and img.format == "JPEG":
            tw, th = config.resized_dims(*upright)
            img.draft("RGB", (th, tw) if swapped else (tw, th))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        return _to_rgb(_upright(img, orientation)), upright
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: {e}") from None
    except DECODE_ERRORS as e:
        raise ImageError(f"{name}: cannot decode image ({first_line(e)})") from None


def _readable(source, name: str):
    """What Image.open takes: a path (checked), or a seekable binary stream."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageError(f"{name}: empty input (0 bytes)")
        return io.BytesIO(source)
    if hasattr(source, "read"):
        data = source.read(MAX_IMAGE_BYTES + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"{name}: a file object must be opened in binary mode ('rb')")
        if not data:
            raise ImageError(f"{name}: empty input (0 bytes)")
        if len(data) > MAX_IMAGE_BYTES:
            raise ImageError(f"{name}: over {MAX_IMAGE_BYTES >> 20} MiB, too large for an image")
        return io.BytesIO(data)
    if os.path.isdir(source):
        raise ImageError(f"{name}: is a directory, not an image")
    if os.path.getsize(source) == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    return source


# Pillow's filter supports (in source pixels at scale 1); NEAREST is not a convolution.
_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0, "lanczos": 3.0}


def _crop_origin(tw: int, th: int, size: int) -> tuple[int, int]:
    """(top, left) of the centre crop, rounded as torchvision's CenterCrop."""
    return int(round((th - size) / 2.0)), int(round((tw - size) / 2.0))


def _horizontal_first(in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    """Whether every Pillow resamples this size change width first. Recent Pillow (13 here)
    runs the height first when it shrinks more than twice as much as the width; older
    releases always go width first."""
    dh = in_h - out_h
    return not (dh > 0 and dh > 2 * (in_w - out_w))


def _resample_crop(img: Image.Image, tw: int, th: int, size: int, top: int, left: int,
                   interpolation: str) -> Image.Image:
    """The size x size window at (top, left) of `img` resized to (tw, th), resampling only
    that window: the same two passes, in the same order (width first), with the same filter
    taps as the full resize. Pillow takes the window as float32 coordinates, so a weight can
    round differently: up to a few pixels in 1,000 differ by a level or two (dev photos:
    0.01-0.05 % bicubic, 0.35 % bilinear)."""
    w, h = img.size
    sx, sy = w / tw, h / th
    x0, x1 = left * sx, (left + size) * sx
    y0, y1 = top * sy, (top + size) * sy
    resample = INTERPOLATIONS[interpolation]
    if _horizontal_first(w, h, size, size):     # one call keeps the order: cheapest
        return img.resize((size, size), resample, box=(x0, y0, x1, y1))
    # Otherwise Pillow would resample this window height first: two single-axis calls.
    # Source rows the vertical taps reach (with a row to spare either side):
    reach = _SUPPORT[interpolation] * max(sy, 1.0) + 1
    r0, r1 = max(0, int(math.floor(y0 - reach))), min(h, int(math.ceil(y1 + reach)))
    rows = img.crop((0, r0, w, r1)) if (r0, r1) != (0, h) else img
    wide = rows.resize((size, r1 - r0), resample, box=(x0, 0, x1, r1 - r0))    # width only
    return wide.resize((size, size), resample, box=(0, y0 - r0, size, y1 - r0))  # height only


def resize_crop(img: Image.Image, config: PreprocessConfig, original_size=None,
                exact: bool = False) -> np.ndarray:
    """Shorter side to resize_size, centre crop: an HxWx3 uint8 array of `config.size`.

    `original_size` is the (w, h) before any JPEG draft reduction, so the target
    dimensions do not depend on whether draft decoding happened. By default only the
    crop is resampled (about 1.6x faster on 500x375 and 640x480; see `_resample_crop`); `exact` resizes the
    whole frame first, bit-identical to the reference transform.
    """
    tw, th = config.resized_dims(*(original_size or img.size))
    s = config.size
    top, left = _crop_origin(tw, th, s)
    fits = top >= 0 and left >= 0
    if (not exact and fits and img.size != (tw, th) and config.interpolation in _SUPPORT
            and _horizontal_first(*img.size, tw, th)):
        return np.asarray(_resample_crop(img, tw, th, s, top, left, config.interpolation))
    if img.size != (tw, th):
        img = img.resize((tw, th), INTERPOLATIONS[config.interpolation])
    arr = np.asarray(img)
    if not fits:  # crop larger than the image: pad like torchvision's CenterCrop
        arr = np.pad(arr, ((max(-top, 0), max(s - th - max(-top, 0), 0)),
                           (max(-left, 0), max(s - tw - max(-left, 0), 0)), (0, 0)))
        top, left = max(top, 0), max(left, 0)
    return np.ascontiguousarray(arr[top:top + s, left:left + s])


def normalize(pixels: np.ndarray, mean, std) -> np.ndarray:
    """uint8 HxWx3 → float32 (x/255 - mean)/std."""
    scale = np.asarray([1.0 / (255.0 * s) for s in std], np.float32)
    shift = np.asarray([m / s for m, s in zip(mean, std)], np.float32)
    return pixels.astype(np.float32) * scale - shift


def preprocess(source, config: PreprocessConfig, exact: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The cropped uint8 HxWx3 pixels of `source`.

    Fast by default: large JPEGs decode at a reduced DCT scale (draft) and only the crop
    is resampled. `exact` decodes at full size and resizes the whole frame, bit-identical
    to the reference (timm / torchvision on Pillow) transform.
    """
    img, upright = _open(source, config, not exact, max_pixels)
    try:
        return resize_crop(img, config, upright, exact)
    except (MemoryError, ValueError, OverflowError) as e:
        raise ImageError(f"{_describe(source)}: cannot resize image ({first_line(e)})") from None
