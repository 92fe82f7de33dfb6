"""Preprocessing against an independent implementation of the reference evaluation
transform (timm / torchvision: Resize(floor(size/crop_pct)) + CenterCrop): `exact=True`
is bit-identical; the default fast path is within two levels on a few pixels in 1,000."""
import io
import math
import zlib

import numpy as np
import pytest
from PIL import Image

from effnet_lite import ImageError, load_image, preprocess
from effnet_lite.preprocess import PreprocessConfig, normalize

FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def reference(img: Image.Image, size: int, crop_pct: float, interpolation: str) -> np.ndarray:
    """Written from the torchvision definitions, sharing no code with runtime."""
    scale = math.floor(size / crop_pct)
    w, h = img.size
    if w <= h:
        ow, oh = scale, int(scale * h / w)
    else:
        oh, ow = scale, int(scale * w / h)
    img = img.resize((ow, oh), FILTERS[interpolation])
    top = int(round((oh - size) / 2.0))
    left = int(round((ow - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size)))


def photo(w, h, seed=0) -> Image.Image:
    """A real photo (scikit-image's cat) resized to w x h, with noise to avoid flat areas."""
    from skimage import data
    rng = np.random.default_rng(seed)
    base = Image.fromarray(data.chelsea()).resize((w, h), Image.BILINEAR)
    arr = np.clip(np.asarray(base).astype(int) + rng.integers(-8, 9, (h, w, 3)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


SIZES = [(500, 375), (375, 500), (333, 517), (1023, 257), (257, 1023), (224, 224), (231, 229)]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("w,h", SIZES)
@pytest.mark.parametrize("size,crop_pct", [(224, 0.875), (300, 0.904), (259, 0.89)])
def test_exact_and_fast_paths_against_reference(w, h, interpolation, size, crop_pct):
    img = photo(w, h)
    cfg = PreprocessConfig(size, crop_pct, interpolation)
    ref = reference(img, size, crop_pct, interpolation)
    exact = preprocess(img, cfg, exact=True)
    assert exact.shape == (size, size, 3) and exact.dtype == np.uint8
    assert np.array_equal(exact, ref)                     # bit-identical
    fast = preprocess(img, cfg)
    diff = np.abs(fast.astype(int) - ref)
    assert fast.shape == (size, size, 3) and fast.dtype == np.uint8
    assert diff.max() <= 2 and (diff > 0).mean() < 0.005, (diff.max(), (diff > 0).mean())


def test_fast_path_keeps_pillows_pass_order():
    """A crop resampled in the other pass order than Pillow's full resize differs by up to
    15 levels on portrait photos (the intermediate image is rounded and clipped)."""
    from effnet_lite.preprocess import _horizontal_first
    rng = np.random.default_rng(0)          # black and white 4x4 blocks: bicubic overshoots
    blocks = rng.integers(0, 2, (88, 69, 3)).repeat(4, 0).repeat(4, 1)[:348, :275] * 255
    img = Image.fromarray(blocks.astype(np.uint8))   # portrait: the crop alone would go height-first
    cfg = PreprocessConfig(224, 0.875, "bicubic")
    tw, th = cfg.resized_dims(*img.size)
    assert _horizontal_first(*img.size, tw, th) and not _horizontal_first(*img.size, 224, 224)
    ref = reference(img, 224, 0.875, "bicubic")
    w, h = img.size
    top, left = int(round((th - 224) / 2.0)), int(round((tw - 224) / 2.0))
    box = (left * w / tw, top * h / th, (left + 224) * w / tw, (top + 224) * h / th)
    one_call = np.asarray(img.resize((224, 224), Image.BICUBIC, box=box)).astype(int)
    assert np.abs(one_call - ref).max() > 8          # Pillow's own crop resize: height first
    assert np.abs(preprocess(img, cfg).astype(int) - ref).max() <= 2


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_rotation_is_applied(tmp_path):
    img = photo(400, 300)
    exif = Image.Exif()
    exif[0x0112] = 6                       # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    path.write_bytes(encode(img, "JPEG", exif=exif, quality=95))
    decoded = Image.open(path)
    decoded.load()
    upright = decoded.transpose(Image.ROTATE_270)
    cfg = PreprocessConfig(224, 0.875, "bicubic")
    assert load_image(path).size == (300, 400)
    assert np.array_equal(preprocess(path, cfg, exact=True), reference(upright, 224, 0.875, "bicubic"))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_any_mode_becomes_rgb(mode, tmp_path):
    rgb = photo(320, 240)
    if mode == "I;16":
        gray16 = (np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
        img = Image.fromarray(gray16)
        expected_rgb = Image.fromarray((gray16 >> 8).astype(np.uint8)).convert("RGB")
    elif mode in ("RGBA", "LA"):
        img = rgb.convert(mode)
        alpha = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
        img.putalpha(Image.fromarray(alpha))
        a = alpha[..., None].astype(np.float64) / 255
        src = np.asarray(img.convert("RGB")).astype(np.float64)
        # reference: alpha-composite over white, as Pillow does it (rounded)
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        expected_rgb = Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
        assert np.abs(np.asarray(expected_rgb) - (src * a + 255 * (1 - a))).max() <= 1.0
    else:
        img = rgb.convert(mode)
        expected_rgb = img.convert("RGB")
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    path = tmp_path / f"img.{fmt.lower()}"
    img.save(path, fmt)
    if mode == "I;16":
        assert Image.open(path).mode.startswith("I")       # really a 16-bit file
    cfg = PreprocessConfig(224, 0.875, "bilinear")
    assert np.array_equal(preprocess(path, cfg, exact=True), reference(expected_rgb, 224, 0.875, "bilinear"))


def test_all_input_kinds_agree(tmp_path):
    img = photo(500, 375)
    path = tmp_path / "p.png"
    img.save(path)
    cfg = PreprocessConfig(240, 0.882, "bicubic")
    expected = reference(img, 240, 0.882, "bicubic")
    fast = preprocess(img, cfg)
    for source in (path, str(path), path.read_bytes(), img, np.asarray(img)):
        assert np.array_equal(preprocess(source, cfg, exact=True), expected), type(source)
        assert np.array_equal(preprocess(source, cfg), fast), type(source)


def test_normalize():
    pixels = np.array([[[0, 128, 255]]], np.uint8)
    out = normalize(pixels, (0.5,) * 3, (0.5,) * 3)
    assert out.dtype == np.float32
    assert np.allclose(out, [[[-1.0, 128 / 127.5 - 1, 1.0]]], atol=1e-6)


def test_jpeg_draft_decodes_smaller_and_stays_close(tmp_path):
    big = photo(4000, 3000).resize((4000, 3000))
    path = tmp_path / "big.jpg"
    big.save(path, quality=92)
    cfg = PreprocessConfig(224, 0.875, "bicubic")
    from effnet_lite.preprocess import _open
    drafted, upright = _open(path, cfg, True, 10**9)
    assert upright == (4000, 3000) and drafted.size[0] < 4000 and drafted.size[1] >= cfg.resize_size
    fast, exact = preprocess(path, cfg), preprocess(path, cfg, exact=True)
    assert fast.shape == exact.shape
    assert np.abs(fast.astype(int) - exact.astype(int)).mean() < 3.0   # DCT-domain downscale


def test_small_jpeg_is_not_drafted(tmp_path):
    img = photo(500, 375)
    path = tmp_path / "small.jpg"
    img.save(path, quality=95)
    cfg = PreprocessConfig(224, 0.875, "bicubic")
    from effnet_lite.preprocess import _open
    # 500x375 -> 341x256: a DCT scale of 1/2 would fall below the target, so no draft
    assert _open(path, cfg, True, 10**9)[0].size == (500, 375)


def huge_png_header(tmp_path, w=10_000, h=10_000):
    """A tiny PNG whose header claims w x h (a decompression bomb's first bytes)."""
    data = bytearray(encode(Image.new("RGB", (8, 8)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = w.to_bytes(4, "big") + h.to_bytes(4, "big")
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17]))
    data[ihdr + 17:ihdr + 21] = crc.to_bytes(4, "big")
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_text("hello, I am text"), "not an image Pillow can read"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(encode(photo(300, 200), "JPEG")[:700]), "cannot decode image"),
])
def test_bad_files_give_one_line_errors(tmp_path, make, message):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(ImageError, match=message) as e:
        preprocess(path, PreprocessConfig(224))
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_decompression_bomb_is_refused_quickly(tmp_path):
    import time
    start = time.perf_counter()
    with pytest.raises(ImageError, match="100 megapixels.*safety limit"):
        preprocess(huge_png_header(tmp_path), PreprocessConfig(224))
    assert time.perf_counter() - start < 5   # refused from the header, not after decoding


def test_other_bad_sources(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        preprocess(tmp_path / "missing.jpg", PreprocessConfig(224))
    with pytest.raises(ImageError, match="is a directory"):
        preprocess(tmp_path, PreprocessConfig(224))
    with pytest.raises(ImageError, match="HxWx3 uint8"):
        preprocess(np.zeros((10, 10), np.float32), PreprocessConfig(224))
    with pytest.raises(ImageError, match="empty input"):
        preprocess(b"", PreprocessConfig(224))


@pytest.mark.parametrize("error", [MemoryError, TypeError])
def test_a_bug_or_no_memory_is_not_a_damaged_photo(photos, monkeypatch, error):
    """Only what Pillow's decoders raise on damaged data becomes "cannot decode image"."""
    from conftest import variant_config

    def broken(*args, **kwargs):
        raise error("raised inside the decoder")
    cfg = variant_config("lite0")
    data = io.BytesIO()
    Image.fromarray(photos["coffee"]).save(data, "PNG")
    monkeypatch.setattr(Image.Image, "load", broken)
    with pytest.raises(error, match="raised inside the decoder"):
        preprocess(data.getvalue(), cfg)
    monkeypatch.setattr(Image.Image, "load", lambda self: (_ for _ in ()).throw(OSError("broken data stream")))
    with pytest.raises(ImageError, match="cannot decode image .broken data stream."):
        preprocess(data.getvalue(), cfg)
