"""Every written file is loaded back through the runtime and compared with fp32 PyTorch on
the calibration photos (or synthetic images without any): top-1 agreement and the logits'
cosine; a file that fails to load, gives non-finite outputs or disagrees wholesale is an
ExportError. The Exporter inherits this."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from effnet_lite import Classifier, ClassifierOptions
from effnet_lite.metrics import softmax as softmax_rows
from effnet_lite.quiet import Captured

from .calibration import pixels_to_input, synthetic_pixels

SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}
MIN_COSINE = 0.8   # below this the written file is broken, not merely quantized
# A file ending in SOFTMAX must give softmax(its logits twin) within this (int8: the op's
# 1/256 output step plus its fixed-point exp; float: rounding)
SOFTMAX_TOLERANCE = {"int8": 2.5 / 256, "fp32": 1e-5}
VERIFICATION_IMAGES = 16      # synthetic images that check a file made without photos


class ExportError(RuntimeError):
    pass


class Verification:
    """For an Exporter: its model, graph, samples (calibration pixels or None), untrained flag,
    _reference and _synthetic caches, and serialize()."""

    def verification_pixels(self) -> tuple[np.ndarray, str]:
        if self.samples is not None:
            return self.samples, "calibration photos"
        if self._synthetic is None:   # no photos were given
            self._synthetic = synthetic_pixels(VERIFICATION_IMAGES, self.model.input_size)
        return self._synthetic, "synthetic images"

    def reference_logits(self, pixels: np.ndarray) -> np.ndarray:
        """fp32 PyTorch logits, computed once per set of verification images."""
        if self._reference is None or self._reference[0] is not pixels:
            with torch.no_grad():
                logits = torch.cat([self.model(pixels_to_input(pixels[i:i + 32], self.graph))
                                    for i in range(0, len(pixels), 32)]).numpy()
            self._reference = (pixels, logits)
        return self._reference[1]

    def outputs(self, path, pixels: np.ndarray, backend: str | None = None) -> np.ndarray:
        """A written file's dequantized outputs for `pixels`, through the runtime (`backend`:
        e.g. onnxruntime-reference for an ONNX file's QDQ semantics)."""
        try:
            with Captured():     # LiteRT's delegate banner stays off the command's stderr
                clf = Classifier.from_file(path, ClassifierOptions(num_threads=os.cpu_count(),
                                                                   backend=backend))
            got = np.stack([clf.io.dequantize(clf.backend.run(clf.io.to_input(p))) for p in pixels])
        except Exception as e:  # noqa: BLE001 - any failure here means the file is broken
            raise ExportError(f"written file failed to load or run: {e}") from None
        if not np.isfinite(got).all():
            raise ExportError("written file produces non-finite outputs")
        return got

    def verify(self, path) -> tuple[float, float, int, str]:
        """Load the written file with the runtime and compare with fp32 PyTorch."""
        return self.compare_logits(self.outputs(path, self.verification_pixels()[0]))

    def compare_logits(self, got: np.ndarray) -> tuple[float, float, int, str]:
        """(top-1 agreement, mean cosine, count, kind) of logits for the verification
        pixels against fp32 PyTorch; ExportError when they show a broken export."""
        pixels, kind = self.verification_pixels()
        ref = self.reference_logits(pixels)
        agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
        cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
        # an untrained model's logits are noise: only loading and finiteness can be checked
        if cos.mean() < MIN_COSINE and not self.untrained:
            raise ExportError(f"written file disagrees with the PyTorch model "
                              f"(cosine similarity {cos.mean():.3f}): the export is broken")
        return agreement, float(cos.mean()), len(pixels), kind

    def verify_softmax(self, path, precision: str, fmt: str, io: str) -> tuple[float, float, int, str]:
        """A file ending in softmax: its logits twin (the same file without the op) is
        verified against PyTorch, then the file must give softmax(twin's logits)."""
        twin, pixels = f"{path}.logits{SUFFIX[fmt]}", self.verification_pixels()[0]
        try:
            Path(twin).write_bytes(self.serialize(precision, fmt, io, softmax=False))
            logits = self.outputs(twin, pixels)
        finally:
            Path(twin).unlink(missing_ok=True)
        result = self.compare_logits(logits)
        error = float(np.abs(self.outputs(path, pixels) - softmax_rows(logits)).max())
        if error > SOFTMAX_TOLERANCE[precision]:
            raise ExportError(f"written file's probabilities differ from the softmax of its logits "
                              f"by up to {error:.4f}: the export is broken")
        return result
