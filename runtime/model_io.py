"""How to feed a loaded model and read its output: layout, size, input encoding,
preprocessing settings, labels, softmax.

Sources, first found wins: our metadata (completed, for .tflite files, by their standard
TFLite metadata and input tensor), else a file's standard metadata alone (files others made:
labels from its packed labels file, normalization for float inputs from NormalizationOptions),
else the variant table by input size and the bundled ImageNet labels. Integer inputs of
files without our metadata get the pixel bytes (uint8) or pixel - 128 (int8), as MediaPipe
and the TFLite Task Library feed them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .backends import Backend
from .errors import ModelError
from .labels import imagenet_labels
from .metadata import MetadataError, ModelMetadata
from .metrics import softmax
from .preprocess import PreprocessConfig, normalize
from .variants import VARIANTS, variant_for_input_size


@dataclass
class ModelIO:
    layout: str                    # "NHWC" or "NCHW"
    config: PreprocessConfig
    input_dtype: np.dtype
    input_scale: float
    input_zero_point: int
    pixel_offset: int | None       # integer input fed as pixel + offset (no float math)
    output_scale: float
    output_zero_point: int
    output_is_probability: bool
    labels: list
    metadata: ModelMetadata | None
    path: str = ""

    def to_input(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 crop → the model's input tensor (batch 1)."""
        if self.pixel_offset is not None:
            if self.pixel_offset == 0:
                x = pixels
            else:  # int8 input = pixel - 128: an integer shift, no float math
                x = (pixels.astype(np.int16) + self.pixel_offset).astype(self.input_dtype)
        else:
            x = normalize(pixels, self.config.mean, self.config.std)
            if self.input_scale:
                info = np.iinfo(self.input_dtype)
                x = np.clip(np.round(x / self.input_scale) + self.input_zero_point, info.min, info.max)
            x = x.astype(self.input_dtype)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None])

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        """Model output as float32 values (logits or probabilities, one row)."""
        out = raw.reshape(-1).astype(np.float32)
        if self.output_scale:
            out = (out - self.output_zero_point) * self.output_scale
        return out

    def to_scores(self, raw: np.ndarray) -> np.ndarray:
        """Model output → class probabilities (float32, one row)."""
        out = self.dequantize(raw)
        if self.output_is_probability:
            # a file that claims probabilities must deliver them (1/256 steps may lose mass)
            if out.min() < -1e-3 or out.max() > 1 + 1e-3 or out.sum() > 1.05:
                raise ModelError(f"{self.path}: the model's output is not probabilities (values "
                                 f"{out.min():.3g}..{out.max():.3g}), though its metadata says so")
            return out
        if self.metadata is None and out.min() >= 0 and abs(float(out.sum()) - 1) < 1e-3:
            return out
        return softmax(out)


def _standard_normalization(backend: Backend) -> dict:
    """mean/std on [0, 1] from a file's NormalizationOptions (pixel units), if any."""
    std = backend.standard
    if std is None or not std.input.mean or not std.input.std:
        return {}
    mean, sd = list(std.input.mean), list(std.input.std)
    if len(mean) == 1 and len(sd) == 1:
        mean, sd = mean * 3, sd * 3
    if (len(mean) != 3 or len(sd) != 3 or not all(math.isfinite(v) for v in mean + sd)
            or not all(0 < v for v in sd)):
        raise ModelError(f"{backend.path}: its NormalizationOptions (mean {mean}, std {sd}) "
                         "are not 1 or 3 finite values with std > 0")
    return {"mean": [m / 255.0 for m in mean], "std": [s / 255.0 for s in sd]}


def _metadata(backend: Backend, layout: str, size: int) -> ModelMetadata | None:
    if backend.metadata is None:
        return None
    known = {}
    if backend.kind == "tflite":     # see metadata.TFLITE_ELSEWHERE
        info = backend.input
        known = {"input_size": size, "layout": layout, "input_dtype": info.dtype.name,
                 "input_scale": info.scale, "input_zero_point": info.zero_point,
                 **_standard_normalization(backend)}
        if backend.standard is not None and backend.standard.labels is not None:
            known["labels"] = backend.standard.labels
    try:
        meta = ModelMetadata.from_json(backend.metadata, **known)
    except MetadataError as e:
        raise ModelError(f"{backend.path}: {e}") from None
    if not meta.digest:
        raise ModelError(f"{backend.path}: carries no digest (made by an older effnet-lite-edge, "
                         "or modified): export it again")
    if meta.digest != backend.digest:
        raise ModelError(f"{backend.path}: model file is corrupt or was modified (its digest "
                         "entry does not match the file)")
    return meta


def _check_against_tensors(path, meta: ModelMetadata, layout: str, size: int, info, output) -> None:
    """Where our metadata and the model's own tensors state the same fact, they must agree
    (for .tflite files the tensors supply those facts, see metadata.TFLITE_ELSEWHERE)."""
    for name, stated, actual in (("layout", meta.layout, layout), ("input_size", meta.input_size, size),
                                 ("input_dtype", meta.input_dtype, info.dtype.name)):
        if stated != actual:
            raise ModelError(f"{path}: metadata field {name!r} says {stated}, the model's input "
                             f"tensor {actual}")
    if meta.output == "probabilities" and output.scale and not (
            abs(output.scale - 1 / 256) < 1e-6 and output.zero_point in (0, -128)):
        raise ModelError(f"{path}: metadata says the output is probabilities, but its "
                         f"quantization (scale {output.scale:g}) cannot hold them")


def inspect_model(backend: Backend, overrides: dict | None = None) -> ModelIO:
    """Work out how to use `backend`'s model; `overrides` may set size, crop_pct,
    interpolation, mean, std (for models without metadata, or to experiment)."""
    path, shape, info = backend.path, backend.input.shape, backend.input
    if len(shape) != 4:
        raise ModelError(f"{path}: not an image classifier (input has rank {len(shape)}, "
                         f"expected a 4-D image tensor)")
    if shape[-1] == 3:
        layout, (h, w) = "NHWC", shape[1:3]
    elif shape[1] == 3:
        layout, (h, w) = "NCHW", shape[2:4]
    else:
        raise ModelError(f"{path}: not an RGB image classifier (input shape {shape})")
    if h != w:
        raise ModelError(f"{path}: non-square input {h}x{w} is not supported")
    meta = _metadata(backend, layout, h)
    if meta:
        _check_against_tensors(path, meta, layout, h, info, backend.output)
    variant = VARIANTS.get(meta.variant) if meta else variant_for_input_size(h)
    variant = variant or VARIANTS["lite0"]
    if meta:
        config = PreprocessConfig(h, meta.crop_pct, meta.interpolation, tuple(meta.mean), tuple(meta.std))
    else:
        config = PreprocessConfig.for_variant(variant, h)
        norm = _standard_normalization(backend)
        if norm and info.dtype == np.float32:
            config = replace(config, mean=tuple(norm["mean"]), std=tuple(norm["std"]))
    if overrides:
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if config.size != h:
        raise ModelError(f"{path}: the model takes {h}x{w} input; size {config.size} cannot be used")

    scale, zp = info.scale, info.zero_point
    if meta and backend.name == "onnxruntime" and info.dtype != np.float32:
        # ONNX keeps quantization inside the graph; our metadata states the input's encoding
        scale, zp = meta.input_scale, meta.input_zero_point
    pixel_offset = _pixel_offset(info.dtype, scale, zp, config, has_metadata=meta is not None)
    if meta and backend.kind == "onnx" and info.dtype != np.float32 and pixel_offset is None:
        # our ONNX files take the pixel (uint8) or pixel - 128 (int8); nothing else is ours
        raise ModelError(f"{path}: metadata input encoding (scale {scale:g}, zero point {zp}, "
                         "mean/std) does not describe integer pixel input")
    out_scale, out_zp = backend.output.scale, backend.output.zero_point
    n_out = int(np.prod(backend.output.shape))
    standard_labels = backend.standard.labels if backend.standard is not None else None
    if meta:
        is_prob = meta.output == "probabilities"
        labels = list(meta.labels) if meta.labels else None
    else:
        # Google's own EfficientNet-Lite files end in softmax: uint8 (or int8) with scale 1/256
        # (float outputs that already sum to one are recognised in to_scores)
        is_prob = bool(out_scale) and abs(out_scale - 1 / 256) < 1e-6 and out_zp in (0, -128)
        labels = standard_labels
    if labels is not None and len(labels) != n_out:
        source = "packed labels file" if standard_labels is not None else "metadata"
        raise ModelError(f"{path}: its {source} names {len(labels)} classes but the model "
                         f"outputs {n_out} scores")
    if labels is None:
        labels = imagenet_labels()
        if n_out == len(labels) + 1:     # a leading "background" class
            labels = ["background"] + labels
        if n_out != len(labels):
            labels = [f"class {i}" for i in range(n_out)]
    return ModelIO(layout, config, info.dtype, scale, zp, pixel_offset, out_scale, out_zp,
                   bool(is_prob), labels, meta, str(path))


def _pixel_offset(dtype, scale, zp, config, has_metadata) -> int | None:
    """The integer shift that turns a pixel into the model's input value, if one exists."""
    if dtype == np.float32:
        return None
    if not has_metadata or not scale:
        # Models without our metadata (e.g. Google's uint8 files) fold the normalisation
        # into their input quantization: they take the pixel (uint8) or pixel - 128 (int8).
        return 0 if dtype == np.uint8 else -128
    mean, std = np.asarray(config.mean), np.asarray(config.std)
    # q = (p/255 - mean)/std/scale + zp = a·p + b; integer-exact when a == 1 and b is whole
    a = 1.0 / (255.0 * std * scale)
    b = zp - mean / (std * scale)
    if np.allclose(a, 1.0, atol=1e-4) and np.allclose(b, b[0]) and abs(b[0] - round(b[0])) < 1e-3:
        shift = int(round(b[0]))
        # only these keep every pixel in range; any other shift goes the float way (clipped)
        if shift == (0 if dtype == np.uint8 else -128):
            return shift
    return None
