"""The content of a .tflite file that its digest covers, in a canonical form.

What a corruption can break - the graph (operators, tensors, quantization, signatures), the
weights, our metadata document and the input normalization in the standard metadata - is
walked field by field with the schema subset below and fed to SHA-256, independent of where
a flatbuffer writer put each table. What a standard tool may rewrite is left out: the rest of
the standard TFLITE_METADATA (labels, names, descriptions; tflite-support's
MetadataPopulator re-serializes the whole model to change it) and the packed files after the
flatbuffer (the zip of labels files, which carries its own CRC-32 per file).

Scalars equal to the schema's default count as absent (writers may omit them), and so do
empty vectors. A field this subset does not know, in a file that carries our digest, makes
the digest fail: nothing our exporter writes is left unchecked.
"""
from __future__ import annotations

import hashlib
import struct

from .tflite_metadata import STANDARD_NAME, _root, _Table, _tensor

# Field kinds: a struct format ("b", "i", "f", ...) is a scalar; "s" a string; "v<fmt>" a vector
# of scalars; "t:<Table>" one table, "T:<Table>" a vector of tables; "buffer" the data of the
# tensor's buffer; "options" the builtin options union (its table spec by type, below); "skip"
# a field hashed elsewhere.
# Entries: field index -> (kind, default). From the TFLite schema (schema.fbs).
_SPEC = {
    "OperatorCode": {0: ("b", 0), 1: ("s", None), 2: ("i", 1), 3: ("i", 0)},
    "SubGraph": {0: ("T:Tensor", None), 1: ("vi", None), 2: ("vi", None), 3: ("T:Operator", None),
                 4: ("s", None), 5: ("i", -1)},
    "Tensor": {0: ("vi", None), 1: ("b", 0), 2: ("buffer", 0), 3: ("s", None),
               4: ("t:QuantizationParameters", None), 5: ("?", False), 7: ("vi", None), 8: ("?", False)},
    "QuantizationParameters": {0: ("vf", None), 1: ("vf", None), 2: ("vf", None), 3: ("vq", None),
                               4: ("B", 0), 6: ("i", 0)},
    "Operator": {0: ("I", 0), 1: ("vi", None), 2: ("vi", None), 3: ("B", 0), 4: ("options", None),
                 5: ("vB", None), 6: ("b", 0), 7: ("v?", None), 8: ("vi", None), 13: ("i", -1)},
    "SignatureDef": {0: ("T:TensorMap", None), 1: ("T:TensorMap", None), 2: ("s", None), 4: ("I", 0)},
    "TensorMap": {0: ("s", None), 1: ("I", 0)},
}
# BuiltinOptions union members our exporter writes: type id -> field index -> (kind, default)
_OPTIONS = {
    1: {0: ("b", 0), 1: ("i", 0), 2: ("i", 0), 3: ("b", 0), 4: ("i", 1), 5: ("i", 1), 6: ("b", 0)},  # Conv2D
    2: {0: ("b", 0), 1: ("i", 0), 2: ("i", 0), 3: ("i", 0), 4: ("b", 0), 5: ("i", 1), 6: ("i", 1)},  # Depthwise
    8: {0: ("b", 0), 1: ("b", 0), 2: ("?", False), 3: ("?", False), 4: ("b", 0)},    # FullyConnected
    9: {0: ("f", 0.0)},             # Softmax
    11: {0: ("b", 0), 1: ("?", True)},     # Add
    27: {0: ("?", False)},          # Reducer (MEAN)
    38: {},                         # Dequantize
    89: {},                         # Quantize
}
_MODEL = {0: ("I", 0), 1: ("T:OperatorCode", None), 2: ("T:SubGraph", None), 3: ("s", None),
          4: ("skip", None), 5: ("vi", None), 6: ("skip", None), 7: ("T:SignatureDef", None)}
# (4 buffers: hashed where tensors use them; 6 metadata: see digest())


class Unverifiable(ValueError):
    """The file holds something the canonical form does not cover."""


class _Walker:
    def __init__(self, data, buffers: list[_Table]):
        self.data, self.buffers = data, buffers
        self.h = hashlib.sha256(b"effnet-lite-edge tflite content 1\0")

    def put(self, *parts: bytes) -> None:
        for p in parts:
            self.h.update(p)

    def blob(self, view) -> None:
        self.put(struct.pack("<Q", len(view)), view)

    def table(self, t: _Table | None, spec: dict, name: str) -> None:
        if t is None:
            self.put(b"-")
            return
        present = [i for i in range(max(0, (t.vsize - 4) // 2)) if t._at(i) is not None]
        unknown = [i for i in present if i not in spec]
        if unknown:
            raise Unverifiable(f"{name} field {unknown[0]} is not covered")
        self.put(b"{")
        for i, (kind, default) in spec.items():
            self.field(t, i, kind, default)
        self.put(b"}")

    def field(self, t: _Table, i: int, kind: str, default) -> None:
        tag = struct.pack("<H", i)
        if kind == "skip":
            return
        if kind == "buffer":
            index = t.scalar(i, "I", 0)
            self.put(tag)
            self.blob(self.buffer_data(index))
        elif kind == "options":
            if t._at(i) is not None:
                type_id = t.scalar(3, "B", 0)
                if type_id not in _OPTIONS:
                    raise Unverifiable(f"builtin options type {type_id} is not covered")
                self.put(tag)
                self.table(t.table(i), _OPTIONS[type_id], f"options {type_id}")
        elif kind == "s":
            raw = _vector_bytes(t, i, 1)
            if raw:
                self.put(tag)
                self.blob(raw)
        elif kind.startswith("v"):
            raw = _vector_bytes(t, i, struct.calcsize("<" + kind[1:]))
            if raw:
                self.put(tag, kind.encode())
                self.blob(raw)
        elif kind.startswith(("t:", "T:")):
            spec = _SPEC[kind[2:]]
            tables = ([t.table(i)] if t._at(i) is not None else []) if kind[0] == "t" else t.tables(i)
            if tables:
                self.put(tag, struct.pack("<I", len(tables)))
                for sub in tables:
                    self.table(sub, spec, kind[2:])
        else:
            value = t.scalar(i, kind, default)
            if value != default:
                self.put(tag, kind.encode(), struct.pack("<" + kind, value))

    def buffer_data(self, index: int):
        if index >= len(self.buffers):
            raise Unverifiable(f"a tensor names buffer {index} of {len(self.buffers)}")
        buf = self.buffers[index]
        if buf._at(0) is not None:
            return _vector_bytes(buf, 0, 1)
        offset, size = buf.scalar(1, "Q", 0), buf.scalar(2, "Q", 0)
        if offset + size > len(self.data):
            raise Unverifiable("a buffer runs past the end of the file")
        return memoryview(self.data)[offset:offset + size] if size else b""


def _vector_bytes(t: _Table, i: int, item: int):
    if t._at(i) is None:
        return b""
    start, n = t._vector(i)
    if start + n * item > len(t.buf):
        raise IndexError("vector runs past the end of the buffer")
    return memoryview(t.buf)[start:start + n * item]


INTEGER_TYPES = (3, 9)          # TensorType UINT8, INT8: pixels go in as they are


def input_normalization(data) -> tuple[list, list, bool]:
    """The standard metadata's mean and std (pixel units; empty if none) and whether the model's
    input tensor is integer. Raises ValueError for a malformed flatbuffer."""
    try:
        model = _root(data, b"TFL3")
        sub = model.tables(2)[0]
        start, n = sub._vector(1)
        (first,) = struct.unpack_from("<i", sub.buf, start) if n else (0,)
        integer = sub.tables(0)[first].scalar(1, "b", 0) in INTEGER_TYPES
        for entry in model.tables(6):
            if entry.string(0) == STANDARD_NAME:
                content = bytes(_Walker(data, model.tables(4)).buffer_data(entry.scalar(1, "I", 0)))
                subgraphs = _root(content, b"M001").tables(3)
                norm = _tensor(subgraphs[0].tables(2)[0] if subgraphs and subgraphs[0].tables(2) else None)
                return list(norm.mean), list(norm.std), integer
        return [], [], integer
    except (struct.error, IndexError, UnicodeDecodeError, Unverifiable) as e:
        raise ValueError(f"malformed TFLite flatbuffer ({e})") from None


def digest(data, own_name: str, blank: bytes, normalization: tuple | None = None) -> str:
    """Hex SHA-256 of the canonical content of the .tflite flatbuffer `data`. `own_name` is our
    metadata entry; its bytes are hashed with `blank` (the digest entry's prefix) followed by
    64 hex digits read as zeros. `normalization` (mean, std in pixel units) is hashed in place
    of the file's (to tell a rewritten normalization from other damage). Raises ValueError
    (Unverifiable, or a malformed flatbuffer)."""
    try:
        model = _root(data, b"TFL3")
        w = _Walker(data, model.tables(4))
        w.table(model, _MODEL, "Model")
        entries = sorted((e.string(0) or "", e.scalar(1, "I", 0)) for e in model.tables(6))
        for name, index in entries:
            content = bytes(w.buffer_data(index))
            if name == STANDARD_NAME:
                # only the input normalization: the rest is names, labels and prose
                root = _root(content, b"M001")
                subgraphs = root.tables(3)
                inputs = subgraphs[0].tables(2) if subgraphs else []
                norm = _tensor(inputs[0] if inputs else None)
                mean, std = normalization or (norm.mean, norm.std)
                content = struct.pack(f"<{len(mean)}f", *mean) + b"/" + struct.pack(f"<{len(std)}f", *std)
            elif name == own_name:
                at = content.find(blank)
                if at < 0 or content.find(blank, at + 1) >= 0:
                    raise Unverifiable("our metadata holds no digest, or two")
                at += len(blank)
                content = content[:at] + b"0" * 64 + content[at + 64:]
            w.put(b"meta")
            w.blob(name.encode())
            w.blob(content)
        return w.h.hexdigest()
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed TFLite flatbuffer ({e})") from None
