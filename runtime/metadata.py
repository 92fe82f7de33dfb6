"""The metadata document every exported model carries (defined here, written by model_export).

A small versioned JSON object, stored in a TFLite model's `metadata` list under the name
`METADATA_NAME`, and in an ONNX model's `metadata_props` under the same key. A .tflite file
states some facts elsewhere (`TFLITE_ELSEWHERE`: labels and normalization in its standard
TFLite metadata, the input encoding in its input tensor), so its JSON leaves them out and
the reader supplies them from there: no fact is written twice.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

METADATA_NAME = "effnet_lite_edge"
FORMAT = "effnet-lite-edge/model-metadata"
VERSION = 2          # 2: TFLite files keep labels/normalization in the standard metadata
# Facts a .tflite file holds in its standard metadata or its tensors, not in our JSON
TFLITE_ELSEWHERE = ("labels", "mean", "std", "input_size", "layout", "input_dtype", "input_scale",
                    "input_zero_point")


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

    def to_json(self, omit: tuple = ()) -> str:
        doc = {"format": FORMAT, "version": VERSION,
               **{k: v for k, v in asdict(self).items() if k not in omit}}
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes, **known) -> "ModelMetadata":
        """Parse our document; `known` supplies (and takes precedence for) the fields the
        file states elsewhere."""
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise MetadataError(f"metadata is not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise MetadataError("metadata is not an effnet-lite-edge document")
        if doc.get("version", 0) > VERSION:
            raise MetadataError(f"metadata version {doc.get('version')} is newer than this "
                                f"runtime understands ({VERSION}): upgrade effnet-lite-edge")
        fields = set(cls.__dataclass_fields__)
        try:
            return cls(**{**{k: v for k, v in doc.items() if k in fields}, **known})
        except TypeError as e:
            raise MetadataError(f"metadata is incomplete ({e})") from None
