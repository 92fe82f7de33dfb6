"""The export pipeline: weights → fold BN → graph → (calibrate → quantize) → write → verify.

An `Exporter` holds one variant; its quantization parameters are computed once and every
file written from it (ONNX and TFLite, any I/O type) serializes those same parameters.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from effnet_lite import __version__, integrity
from effnet_lite.labels import imagenet_labels
from effnet_lite.metadata import METADATA_NAME, TFLITE_ELSEWHERE, ModelMetadata, crop_pct_problem
from effnet_lite.preprocess import PreprocessConfig
from effnet_lite.progress import Progress
from effnet_lite.tflite_metadata import STANDARD_NAME
from effnet_lite.variants import NUM_CLASSES, QUANTIZED_MEAN

from . import onnx_writer, standard_metadata, tflite_writer
from .calibration import collect, data_free_ranges, load_calibration_images, synthetic_pixels
from .cli_checks import output_problem
from .folding import fold_batchnorm
from .graph import build_graph, with_pixel_input
from .quantize import PIXEL_SCALE, QuantizedGraph, quantize_graph
from .rounding import ROUNDINGS, second_moments
from .verification import SUFFIX, ExportError, Verification
from .weights import WEIGHT_PACKAGES, checkpoint_labels, checkpoint_metadata, load_model, metadata_json

FORMATS = ("tflite", "onnx")
PRECISIONS = ("fp32", "int8")
SYNTHETIC_FOR_ROUNDING = 64   # synthetic images data-free learned rounding reconstructs on


@dataclass
class ExportResult:
    path: Path
    variant: str
    precision: str
    fmt: str
    io: str
    size_bytes: int
    seconds: float
    agreement: float       # top-1 agreement with the fp32 PyTorch model
    cosine: float          # mean cosine similarity of logits with fp32 PyTorch
    samples: int
    sample_kind: str       # "calibration photos" or "synthetic images"


def check_writable(path: Path) -> None:
    problem = output_problem(path)
    if problem:
        raise ExportError(f"{path}: {problem}")


class Exporter(Verification):
    def __init__(self, variant: str, weights=None, random_init: bool = False, input_size=None,
                 labels: list | None = None, log=lambda msg: print(msg, file=sys.stderr), crop_pct=None):
        self.log = log
        self.model = load_model(variant, weights, random_init, input_size)
        self.variant = self.model.variant
        self.own_weights = weights is not None or self.variant.name not in WEIGHT_PACKAGES
        # an effnet-train checkpoint names its classes and the centre crop it was trained for
        labels, crop_pct = self._from_checkpoint(weights, labels, crop_pct)
        self.labels = self._labels(labels, self.model.classifier.out_features)
        self.untrained = bool(getattr(self.model, "untrained", False))
        if self.untrained:
            log(f"warning: {self.variant.name} has random weights (untrained): "
                "its files are for latency measurements only")
        self.graph = build_graph(fold_batchnorm(self.model), self.model)
        self.config = PreprocessConfig.for_variant(self.variant, self.model.input_size)
        if crop_pct is not None:
            if problem := crop_pct_problem(crop_pct):
                raise ExportError(f"{weights or 'crop_pct'}: crop_pct {problem}")
            self.config = replace(self.config, crop_pct=float(crop_pct))
        self.samples: np.ndarray | None = None
        self.quantized: QuantizedGraph | None = None
        self.ranges_used: tuple | None = None
        self._reference = None
        self._synthetic = None

    @staticmethod
    def _from_checkpoint(weights, labels, crop_pct) -> tuple:
        """What the caller did not give, from the checkpoint's metadata where it has them."""
        meta = checkpoint_metadata(weights) if weights is not None else {}
        if labels is None:
            labels = checkpoint_labels(meta, weights)
        if crop_pct is None:
            crop_pct = metadata_json(meta, "crop_pct", weights)
        return labels, crop_pct

    @staticmethod
    def _labels(labels: list | None, classes: int) -> list:
        if labels is None:
            if classes != NUM_CLASSES:
                raise ExportError(f"the checkpoint's classifier has {classes} classes: give "
                                  f"--labels FILE with their {classes} names, one per line")
            return imagenet_labels()
        if len(labels) != classes:
            raise ExportError(f"the labels file names {len(labels)} classes but the checkpoint's "
                              f"classifier has {classes}")
        return list(labels)

    # ---- calibration -------------------------------------------------------------
    def calibrate(self, calib_dir=None, count: int = 200, estimator: str = "mse",
                  rounding: str = "nearest") -> QuantizedGraph:
        """Calibrate on a folder's photos, or data-free without one. `rounding="learned"`
        rounds the weights to reconstruct each layer's output on the photos (rounding.py)."""
        _check_rounding(rounding)
        pixel_graph = with_pixel_input(self.graph)
        if calib_dir is not None:
            return self.calibrate_on(load_calibration_images(calib_dir, count, self.config, warn=self.log),
                                     Path(calib_dir).name, estimator, rounding)
        self.log("notice: no --calib-dir given: data-free calibration from the model's "
                 "BatchNorm statistics (folder calibration is more accurate)")
        ranges, means = data_free_ranges(pixel_graph)
        moments = None
        if rounding == "learned":     # reconstruct on blocky synthetic images (measured to help)
            moments = second_moments(pixel_graph, synthetic_pixels(SYNTHETIC_FOR_ROUNDING,
                                                                   self.model.input_size))
        return self.use_ranges(ranges, {"method": "data-free (BatchNorm statistics)", "images": 0},
                               means, moments)

    def calibrate_on(self, pixels: np.ndarray, source: str, estimator: str = "mse",
                     rounding: str = "nearest") -> QuantizedGraph:
        """Calibrate on crops already made ((N, H, W, 3) uint8, as the runtime preprocesses);
        they are also the verification photos of the files written next."""
        _check_rounding(rounding)
        self.samples = pixels
        pixel_graph = with_pixel_input(self.graph)
        collector = collect(pixel_graph, pixels)
        info = {"method": estimator, "images": int(len(pixels)), "source": source}
        moments = second_moments(pixel_graph, pixels) if rounding == "learned" else None
        return self.use_ranges(collector.ranges(estimator), info, collector.channel_means(), moments)

    def use_ranges(self, ranges: dict, info: dict, channel_means: dict | None,
                   moments: dict | None = None) -> QuantizedGraph:
        """Quantize with activation ranges (tensor → (lo, hi) on the pixel-input graph) and,
        for bias correction, per-channel activation means; with `moments` (per weighted op,
        rounding.second_moments), learned rounding."""
        self.ranges_used = (ranges, info, channel_means)     # what a saved calibration needs
        info = {**info, "bias_correction": channel_means is not None,
                "rounding": "nearest" if moments is None else "learned"}
        layers = sum(op.weight is not None for op in self.graph.ops)
        with Progress(layers, "learned rounding (2/2): layers", enabled=None if moments else False) as bar:
            self.quantized = quantize_graph(with_pixel_input(self.graph), ranges, info, channel_means,
                                            moments, on_layer=bar.update)
        return self.quantized

    # ---- writing -----------------------------------------------------------------
    def metadata(self, precision: str, fmt: str, io: str, softmax: bool = False) -> ModelMetadata:
        v = self.variant
        meta = ModelMetadata(
            variant=v.name, input_size=self.model.input_size,
            layout="NHWC" if fmt == "tflite" else "NCHW", crop_pct=self.config.crop_pct,
            interpolation=v.interpolation, mean=list(v.mean), std=list(v.std), precision=precision,
            output="probabilities" if softmax else "logits", input_dtype="float32",
            labels=self.labels, exporter=f"effnet-lite-edge {__version__}", untrained=self.untrained)
        if precision == "int8":
            meta.mean, meta.calibration = list(QUANTIZED_MEAN), dict(self.quantized.calibration)
            meta.input_dtype, meta.input_scale = io, PIXEL_SCALE if io != "float32" else 0.0
            meta.input_zero_point = 128 if io == "uint8" else 0
            meta.pair_safe = fmt == "onnx"        # onnx_writer writes the pair-safe weights
        return meta

    def _tflite_metadata(self, meta: ModelMetadata, io: str) -> tuple[dict, dict]:
        """(Model.metadata entries, files to pack): the standard document and our JSON
        without the facts the standard document and the tensors hold."""
        name = f"EfficientNet-{self.variant.name.capitalize()} {meta.precision}"
        what = ("a fine-tuned checkpoint" if self.own_weights and not self.untrained
                else "UNTRAINED random weights" if self.untrained else "ImageNet weights by Google")
        description = (f"{name} image classifier, {len(meta.labels)} classes ({what}), "
                       f"{io} input; exported by effnet-lite-edge {__version__}")
        author = ("EfficientNet-Lite architecture and weights: Google; export: effnet-lite-edge"
                  if not self.own_weights else "export: effnet-lite-edge; weights: the checkpoint's author")
        license_ = "Apache-2.0" if not self.own_weights else "unspecified: the checkpoint's license applies"
        out_type = io if meta.precision == "int8" else "float32"
        std_buf, files = standard_metadata.build(meta, io, out_type, name, description,
                                                 __version__, author, license_)
        own = meta.to_json(omit=TFLITE_ELSEWHERE).encode()
        return {STANDARD_NAME: std_buf, METADATA_NAME: own}, files

    def serialize(self, precision: str, fmt: str, io: str = "int8", softmax: bool = False) -> bytes:
        if fmt not in FORMATS:
            raise ExportError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
        if precision not in PRECISIONS:
            raise ExportError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if precision == "int8" and self.quantized is None:
            self.calibrate()
        meta = self.metadata(precision, fmt, io, softmax)
        meta.digest = integrity.PLACEHOLDER           # filled in by integrity.seal below
        doc = f"EfficientNet-{self.variant.name.capitalize()} {precision}, made by effnet-lite-edge"
        if fmt == "tflite":
            entries, files = self._tflite_metadata(meta, io if precision == "int8" else "float32")
            if precision == "fp32":
                blob = tflite_writer.write_fp32(self.graph, entries, doc, softmax)
            else:
                blob = tflite_writer.write_int8(self.quantized, entries, doc, io, softmax)
            return integrity.seal(standard_metadata.pack_files(blob, files))
        if precision == "fp32":
            return integrity.seal(onnx_writer.write_fp32(self.graph, meta.to_json(), doc, softmax))
        if io not in onnx_writer.ACTIVATION_TYPES:
            raise ExportError(f"ONNX int8 models take uint8 or int8 input, not {io}")
        return integrity.seal(onnx_writer.write_int8(self.quantized, meta.to_json(), doc,
                                                     activations=io, softmax=softmax))

    def export(self, path, precision: str = "int8", fmt: str = "tflite", io: str | None = None,
               verify: bool = True, softmax: bool = False) -> ExportResult:
        """Write one file atomically (temporary name, verified, then renamed)."""
        start = time.perf_counter()
        path = Path(path)
        check_writable(path)
        io = io or ("float32" if precision == "fp32" else "uint8" if fmt == "onnx" else "int8")
        blob = self.serialize(precision, fmt, io, softmax)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=SUFFIX[fmt], dir=path.resolve().parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes 0600; a new file respects the umask
            if not verify:
                agreement, cosine, n, kind = float("nan"), float("nan"), 0, ""
            elif softmax:
                agreement, cosine, n, kind = self.verify_softmax(tmp, precision, fmt, io)
            else:
                agreement, cosine, n, kind = self.verify(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ExportResult(path, self.variant.name, precision, fmt, io, len(blob),
                            time.perf_counter() - start, agreement, cosine, n, kind)


def _check_rounding(rounding: str) -> None:
    if rounding not in ROUNDINGS:
        raise ExportError(f"unknown rounding {rounding!r}: choose one of {', '.join(ROUNDINGS)}")


def _umask() -> int:
    """The process umask, read without changing it (os.umask would set it for a moment, and
    another thread's files created then would get the wrong mode). Without /proc (not
    Linux) only the set-and-restore remains."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)      # the briefest, safest value for that moment
    os.umask(mask)
    return mask
