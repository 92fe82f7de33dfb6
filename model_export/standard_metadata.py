"""The standard TFLite Model Metadata (metadata_schema.fbs) that our .tflite files carry, so
that MediaPipe Tasks, the TFLite Task Library and Android tooling can use them as they are.

The document holds what the schema has a place for (names, normalization, stats, the labels
file, packed into the model as an appended zip as Google's populator does); our own JSON entry
keeps only what the schema lacks (crop, interpolation, variant, calibration...), so no fact is
stated twice. The runtime reads it back with runtime.tflite_metadata.
"""
from __future__ import annotations

import io
import zipfile

import flatbuffers

from effnet_lite import variants
from effnet_lite.metadata import ModelMetadata
from . import metadata_schema_generated as md

LABELS_FILE = "labels.txt"
MIN_PARSER_VERSION = "1.0.0"    # every field written here exists since schema 1.0.0
ZIP_DATE = (1980, 1, 1, 0, 0, 0)   # the earliest a zip entry can carry
_IO_RANGE = {"uint8": (0.0, 255.0), "int8": (-128.0, 127.0)}


def _stats(lo: list, hi: list) -> md.StatsT:
    s = md.StatsT()
    s.min, s.max = [float(v) for v in lo], [float(v) for v in hi]
    return s


def pixel_normalization(meta: ModelMetadata) -> tuple[list, list]:
    """mean/std in pixel units (0-255), whatever the input tensor's type."""
    return variants.pixel_normalization(meta.mean, meta.std)


def _input(meta: ModelMetadata, input_type: str) -> md.TensorMetadataT:
    t = md.TensorMetadataT()
    t.name = "image"
    size = meta.input_size
    t.description = (f"RGB image, {size}x{size}: the centre {meta.crop_pct:.1%} of the photo, "
                     f"resized with {meta.interpolation} interpolation")
    t.content = md.ContentT()
    t.content.contentPropertiesType = md.ContentProperties.ImageProperties
    t.content.contentProperties = md.ImagePropertiesT()
    t.content.contentProperties.colorSpace = md.ColorSpaceType.RGB
    unit = md.ProcessUnitT()
    unit.optionsType = md.ProcessUnitOptions.NormalizationOptions
    unit.options = md.NormalizationOptionsT()
    mean, std = pixel_normalization(meta)
    unit.options.mean, unit.options.std = mean, std
    t.processUnits = [unit]
    if input_type in _IO_RANGE:      # integer input: the pixel bytes as the tensor holds them
        lo, hi = _IO_RANGE[input_type]
        t.stats = _stats([lo], [hi])
    else:                            # float input: the normalized range of pixels 0..255
        t.stats = _stats([(0 - m) / s for m, s in zip(mean, std)],
                         [(255 - m) / s for m, s in zip(mean, std)])
    return t


def _output(meta: ModelMetadata, output_type: str) -> md.TensorMetadataT:
    t = md.TensorMetadataT()
    probabilities = meta.output == "probabilities"
    t.name = "probability" if probabilities else "logits"
    t.description = (f"{'Probabilities' if probabilities else 'Logits (apply softmax for probabilities)'}"
                     f" of the {len(meta.labels)} categories")
    t.content = md.ContentT()
    t.content.contentPropertiesType = md.ContentProperties.FeatureProperties
    t.content.contentProperties = md.FeaturePropertiesT()
    if probabilities:
        lo, hi = _IO_RANGE.get(output_type, (0.0, 1.0))
        t.stats = _stats([lo], [hi])
    labels = md.AssociatedFileT()
    labels.name, labels.type = LABELS_FILE, md.AssociatedFileType.TENSOR_AXIS_LABELS
    labels.description = "Category names, one per line, in output order"
    t.associatedFiles = [labels]
    return t


def build(meta: ModelMetadata, input_type: str, output_type: str, name: str, description: str,
          version: str, author: str, license_: str) -> tuple[bytes, dict[str, bytes]]:
    """(the TFLITE_METADATA buffer, {file name: bytes} to pack into the model)."""
    model = md.ModelMetadataT()
    model.name, model.description, model.version = name, description, version
    model.author, model.license, model.minParserVersion = author, license_, MIN_PARSER_VERSION
    sub = md.SubGraphMetadataT()
    sub.inputTensorMetadata = [_input(meta, input_type)]
    sub.outputTensorMetadata = [_output(meta, output_type)]
    model.subgraphMetadata = [sub]
    fb = flatbuffers.Builder(4096)
    fb.Finish(model.Pack(fb), file_identifier=b"M001")
    labels = ("\n".join(meta.labels) + "\n").encode("utf-8")
    return bytes(fb.Output()), {LABELS_FILE: labels}


def pack_files(model: bytes, files: dict[str, bytes]) -> bytes:
    """Append `files` to the flatbuffer as a zip (readers find a zip by its end record, so
    the TFLite interpreter and zip readers both see what they expect). Entries carry a fixed
    date, so that the same model exported twice gives the same bytes."""
    buf = io.BytesIO(model)
    buf.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buf, "a") as z:
        for fname, blob in files.items():
            entry = zipfile.ZipInfo(fname, date_time=ZIP_DATE)
            entry.external_attr = 0o644 << 16          # a regular file, readable once extracted
            z.writestr(entry, blob)
    return buf.getvalue()
