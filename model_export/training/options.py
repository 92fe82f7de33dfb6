"""What a training run is asked for (TrainOptions), and the settings it follows by default."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from effnet_lite.variants import UnknownVariantError, get_variant

from ..rounding import ROUNDINGS
from .run_folder import TrainError

# calibration photos, every class in turn. Measured on the dev photos' 7 groups: 50 or 100 made
# an int8 file that agrees with fp32 on 200/200 photos, all 160 on 199/200 at 1.6x the time
CALIB_MAX = 100
# the exported files' int8 weights: learned rounding (rounding.py). After --fine-tune
# (250 photos, 499 new ones; docs/train.md) it agreed with the fp32 model on 98.8 % of them
# where nearest rounding gave 98.2 % (clothing) and 98.6 % (hand signs), for about 17 s more
ROUNDING = "learned"
# the other centre crop tried besides the variant's (0.875, as ImageNet is judged): the whole
# shorter side. Cross-validation chooses between them with the penalty: measured 2026-12-05 on
# new photos (docs/train.md), it gained up to 3 points on portrait product shots and lost up
# to 3.8 on hand signs, so neither suits every set
WHOLE_CROP = 1.0
AGREE_MAX = 300       # training photos on which each file's answers are compared with fp32's
# the files each export choice adds: (name suffix, precision, format, io, softmax)
EXPORTS = {
    "tflite": ("int8.tflite", "int8", "tflite", "int8", False),
    "mediapipe": ("uint8_softmax.tflite", "int8", "tflite", "uint8", True),
    "onnx": ("int8.onnx", "int8", "onnx", "uint8", False),
    "fp32": ("fp32.tflite", "fp32", "tflite", None, False),
}


@dataclass
class TrainOptions:
    variant: str = "lite0"
    weights: Path | None = None           # ImageNet checkpoint (timm format; needed for lite3/4)
    init: Path | None = None              # an earlier effnet-train model to continue from
    views: int | None = None              # augmented views of each photo besides its centre crop (None: auto_views)
    fine_tune: bool = False
    fine_tune_if_better: bool = False     # fine-tune, but deploy it only if it beats the head on held-out photos
    ensemble: bool = False                # fine-tune, and deploy the frozen head's network with it (model.Pair)
    label_smoothing: float = 0.0
    class_weights: str = "none"           # or "balanced"
    seed: int = 0
    threads: int | None = None
    export: tuple = ("tflite",)
    rounding: str = ROUNDING              # the int8 weights of the exported files: or "nearest"

    @property
    def tunes(self) -> bool:
        return self.fine_tune or self.fine_tune_if_better or self.ensemble

    def check(self) -> None:
        try:
            get_variant(self.variant)
        except UnknownVariantError as e:
            raise TrainError(str(e)) from None
        if self.views is not None and not 1 <= self.views <= 64:
            raise TrainError("views must be between 1 and 64")
        if not 0 <= self.label_smoothing < 1:
            raise TrainError("label smoothing must be in [0, 1)")
        if self.class_weights not in ("none", "balanced"):
            raise TrainError("class weights must be 'none' or 'balanced'")
        if self.init and self.weights:
            raise TrainError("--init and --weights both give the network to start from: give one "
                             "(--init continues an effnet-train model, --weights starts from ImageNet)")
        if self.ensemble and self.fine_tune_if_better:
            raise TrainError("--ensemble deploys both networks, --fine-tune-if-better one of them: give one")
        if self.rounding not in ROUNDINGS:
            raise TrainError(f"rounding must be one of {', '.join(ROUNDINGS)}, not {self.rounding!r}")
        unknown = [x for x in self.export if x not in EXPORTS]
        if unknown or "tflite" not in self.export:
            raise TrainError(f"export: unknown {unknown[0]!r}" if unknown else "export must include tflite")


# --views by default: 8 up to 1,000 photos, then as many as keep about 9,000 crops in all (at
# least 1). Measured on 3,066 clothing photos (held-out fifths, two seeds): 0, 1, 2, 4 or 8
# views all gave 86.5-88.9 %, within the noise, and the head's fit costs in proportion to the
# rows (docs/train.md)
VIEWS, CROPS = 8, 9000


def auto_views(photos: int) -> int:
    return max(1, min(VIEWS, CROPS // max(photos, 1) - 1))
