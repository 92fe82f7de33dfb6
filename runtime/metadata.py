"""The metadata document every exported model carries (defined here, written by model_export).

A small versioned JSON object, stored in a TFLite model's `metadata` list under the name
`METADATA_NAME`, and in an ONNX model's `metadata_props` under the same key. A .tflite file
states some facts elsewhere (`TFLITE_ELSEWHERE`: labels and normalization in its standard
TFLite metadata, the input encoding in its input tensor), so its JSON leaves them out and
the reader supplies them from there: no fact is written twice.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

METADATA_NAME = "effnet_lite_edge"
FORMAT = "effnet-lite-edge/model-metadata"
VERSION = 4   # 2: TFLite labels/normalization in the standard metadata; 3: digest; 4: .tflite content digest
# Facts a .tflite file holds in its standard metadata or its tensors, not in our JSON
TFLITE_ELSEWHERE = ("labels", "mean", "std", "input_size", "layout", "input_dtype", "input_scale",
                    "input_zero_point")
MAX_JSON_BYTES = 4 << 20     # ours is ~25 kB with 1000 labels
MAX_LABEL_CHARS = 1000
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
# the valid values of the enumerated fields (the runtime's preprocessing supports these)
CHOICES = {"layout": ("NHWC", "NCHW"), "interpolation": ("bicubic", "bilinear", "nearest", "lanczos"),
           "precision": ("fp32", "int8"), "output": ("logits", "probabilities"),
           "input_dtype": ("float32", "uint8", "int8")}
CROP_PCT_RANGE = (0.3, 1.0)   # timm's eval crops lie in 0.75-1.0; below 0.3 is no photo crop
STD_RANGE = (1e-3, 10.0)


class MetadataError(ValueError):
    pass


@dataclass
class ModelMetadata:
    variant: str
    input_size: int
    layout: str                 # "NHWC" or "NCHW"
    crop_pct: float
    interpolation: str          # "bicubic" or "bilinear"
    mean: list                  # normalisation the model expects: (x/255 - mean) / std
    std: list
    precision: str              # "fp32" or "int8"
    output: str = "logits"      # "logits" or "probabilities"
    input_dtype: str = "float32"     # "float32", "uint8" or "int8"
    input_scale: float = 0.0         # integer input: real = scale × (q − zero_point)
    input_zero_point: int = 0
    calibration: dict = field(default_factory=dict)   # method, images, source (int8 only)
    labels: list = field(default_factory=list)
    exporter: str = ""
    untrained: bool = False
    # int8 weights bounded so that no two u8 x s8 products overflow int16 (x86 without VNNI)
    pair_safe: bool = False
    digest: str = ""                 # "sha256:…" of the file (runtime.integrity)

    def to_json(self, omit: tuple = ()) -> str:
        doc = {"format": FORMAT, "version": VERSION,
               **{k: v for k, v in asdict(self).items() if k not in omit}}
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes, **known) -> "ModelMetadata":
        """Parse and validate our document; `known` supplies (and takes precedence for) the
        fields the file states elsewhere. Every problem is a one-line MetadataError."""
        if len(text) > MAX_JSON_BYTES:
            raise MetadataError(f"metadata is {len(text)} bytes, over the {MAX_JSON_BYTES}-byte limit")
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise MetadataError(f"metadata is not valid JSON ({e})") from None
        except RecursionError:
            raise MetadataError("metadata JSON is nested too deeply") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise MetadataError("metadata is not an effnet-lite-edge document")
        version = doc.get("version", 0)
        if not _is_int(version):
            raise MetadataError("metadata field 'version' is not a whole number")
        if version > VERSION:
            raise MetadataError(f"metadata version {version} is newer than this "
                                f"runtime understands ({VERSION}): upgrade effnet-lite-edge")
        fields = set(cls.__dataclass_fields__)
        try:
            meta = cls(**{**{k: v for k, v in doc.items() if k in fields}, **known})
        except TypeError as e:
            raise MetadataError(f"metadata is incomplete ({e})") from None
        meta.validate()
        return meta

    def validate(self) -> None:
        """Type, range and length of every field; MetadataError names the first bad one."""
        def bad(name, what):
            raise MetadataError(f"metadata field {name!r} {what}")

        for name in ("variant", "exporter", "digest"):
            if not isinstance(getattr(self, name), str) or len(getattr(self, name)) > MAX_LABEL_CHARS:
                bad(name, "is not a short string")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                bad(name, f"must be one of {', '.join(choices)}, not {_show(getattr(self, name))}")
        if not _is_int(self.input_size) or not 16 <= self.input_size <= 4096:
            bad("input_size", f"must be a whole number of pixels in 16..4096, not {_show(self.input_size)}")
        if problem := crop_pct_problem(self.crop_pct):
            bad("crop_pct", problem)
        for name, (lo, hi) in (("mean", (0.0, 1.0)), ("std", STD_RANGE)):
            value = getattr(self, name)
            if (not isinstance(value, list) or len(value) != 3
                    or not all(_is_number(v) and lo <= v <= hi for v in value)):
                bad(name, f"must be 3 numbers in [{lo:g}, {hi:g}], not {_show(value)}")
        if not _is_number(self.input_scale) or self.input_scale < 0:
            bad("input_scale", f"must be a number >= 0, not {_show(self.input_scale)}")
        limits = {"float32": (0, 0), "uint8": (0, 255), "int8": (-128, 127)}[self.input_dtype]
        if not _is_int(self.input_zero_point) or not limits[0] <= self.input_zero_point <= limits[1]:
            bad("input_zero_point", f"must be a whole number in {limits[0]}..{limits[1]} for "
                                    f"{self.input_dtype} input, not {_show(self.input_zero_point)}")
        if (self.input_dtype == "float32") != (self.input_scale == 0):
            bad("input_scale", f"is {self.input_scale:g}, which does not fit {self.input_dtype} input")
        if not isinstance(self.calibration, dict) or len(json.dumps(self.calibration)) > 10_000:
            bad("calibration", "is not a small JSON object")
        if not isinstance(self.labels, list) or not all(
                isinstance(x, str) and len(x) <= MAX_LABEL_CHARS for x in self.labels):
            bad("labels", f"must be a list of names (strings of at most {MAX_LABEL_CHARS} characters)")
        for name in ("untrained", "pair_safe"):
            if not isinstance(getattr(self, name), bool):
                bad(name, f"must be true or false, not {_show(getattr(self, name))}")
        if self.digest and not DIGEST_RE.match(self.digest):
            bad("digest", "is not 'sha256:' and 64 hex digits")


def crop_pct_problem(value) -> str | None:
    """What is wrong with `value` as a centre crop's share of the photo, or None."""
    lo, hi = CROP_PCT_RANGE
    if not _is_number(value) or not lo <= value <= hi:
        return f"must be a number in [{lo}, {hi}], not {_show(value)}"
    return None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
