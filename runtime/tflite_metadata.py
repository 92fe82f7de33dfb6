"""Read a .tflite file's metadata without any schema package.

Just enough of the flatbuffer format for two schemas:
- the TFLite model: Model.buffers (field 4), Model.metadata (field 6), Metadata{name, buffer},
  Buffer.data (field 0) or Buffer{offset, size} (models over 2 GB);
- the standard TFLite Model Metadata (`metadata_schema.fbs`, the "TFLITE_METADATA" entry that
  TFLite Support and MediaPipe read): model name/description/version/author/license, the input's
  NormalizationOptions and the output's label files, which live in a zip appended to the model.
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

STANDARD_NAME = "TFLITE_METADATA"      # the Model.metadata entry of the standard schema
# metadata_schema.fbs enums used here
NORMALIZATION_OPTIONS = 1              # ProcessUnitOptions.NormalizationOptions
TENSOR_AXIS_LABELS = 2                 # AssociatedFileType.TENSOR_AXIS_LABELS
MAX_LABELS_BYTES = 16 << 20            # a labels file larger than this is not a labels file


class _Table:
    """One flatbuffer table: typed access to its fields by index."""

    def __init__(self, buf, pos: int):
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vsize = struct.unpack_from("<H", buf, self.vtable)[0]

    def _at(self, index: int) -> int | None:
        if 4 + 2 * index >= self.vsize:
            return None
        rel = struct.unpack_from("<H", self.buf, self.vtable + 4 + 2 * index)[0]
        return self.pos + rel if rel else None

    def _ref(self, at: int) -> int:
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def _vector(self, index: int) -> tuple[int, int]:
        at = self._at(index)
        if at is None:
            return 0, 0
        start = self._ref(at)
        return start + 4, struct.unpack_from("<I", self.buf, start)[0]

    def scalar(self, index: int, fmt: str, default=0):
        at = self._at(index)
        return default if at is None else struct.unpack_from("<" + fmt, self.buf, at)[0]

    def string(self, index: int) -> str | None:
        at = self._at(index)
        if at is None:
            return None
        start = self._ref(at)
        n = struct.unpack_from("<I", self.buf, start)[0]
        return bytes(self.buf[start + 4:start + 4 + n]).decode("utf-8")

    def bytes_(self, index: int) -> bytes | None:
        if self._at(index) is None:
            return None
        start, n = self._vector(index)
        if start + n > len(self.buf):
            raise IndexError("vector runs past the end of the buffer")
        return bytes(self.buf[start:start + n])

    def table(self, index: int) -> "_Table | None":
        at = self._at(index)
        return None if at is None else _Table(self.buf, self._ref(at))

    def tables(self, index: int) -> list["_Table"]:
        start, n = self._vector(index)
        if start + 4 * n > len(self.buf):
            raise IndexError("vector runs past the end of the buffer")
        return [_Table(self.buf, self._ref(start + 4 * i)) for i in range(n)]

    def floats(self, index: int) -> list[float]:
        start, n = self._vector(index)
        return list(struct.unpack_from(f"<{n}f", self.buf, start)) if n else []


def _root(buf, identifier: bytes) -> _Table:
    if bytes(buf[4:8]) != identifier:
        raise ValueError(f"no {identifier.decode()} identifier")
    return _Table(buf, struct.unpack_from("<I", buf, 0)[0])


def read_metadata(data) -> dict[str, bytes]:
    """name → bytes of every Model.metadata entry; raises ValueError on a malformed file."""
    try:
        model = _root(data, b"TFL3")
        buffers, out = model.tables(4), {}
        for entry in model.tables(6):
            name, index = entry.string(0), entry.scalar(1, "I", None)
            if name is None or index is None:
                continue
            buf = buffers[index]
            blob = buf.bytes_(0)
            if blob is None:   # >2 GB models keep buffers after the flatbuffer: offset/size fields
                off, size = buf.scalar(1, "Q", None), buf.scalar(2, "Q", None)
                blob = bytes(data[off:off + size]) if off is not None and size is not None else None
            if blob is not None:
                out[name] = blob
        return out
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed TFLite flatbuffer ({e})") from None


@dataclass
class TensorInfoMetadata:
    name: str = ""
    description: str = ""
    mean: list = field(default_factory=list)          # NormalizationOptions, pixel units
    std: list = field(default_factory=list)
    stats_min: list = field(default_factory=list)
    stats_max: list = field(default_factory=list)
    label_files: list = field(default_factory=list)   # TENSOR_AXIS_LABELS file names, in order


@dataclass
class StandardMetadata:
    """The fields of a standard TFLite Model Metadata document that this runtime uses."""
    name: str = ""
    description: str = ""
    version: str = ""
    author: str = ""
    license: str = ""
    min_parser_version: str = ""
    input: TensorInfoMetadata = field(default_factory=TensorInfoMetadata)
    output: TensorInfoMetadata = field(default_factory=TensorInfoMetadata)
    labels: list | None = None     # from the output's first labels file, when packed


def _tensor(t: _Table | None) -> TensorInfoMetadata:
    if t is None:
        return TensorInfoMetadata()
    out = TensorInfoMetadata(t.string(0) or "", t.string(1) or "")
    for unit in t.tables(4):
        options = unit.table(1)
        if unit.scalar(0, "B") == NORMALIZATION_OPTIONS and options is not None:
            out.mean, out.std = options.floats(0), options.floats(1)
    stats = t.table(5)
    if stats is not None:
        out.stats_max, out.stats_min = stats.floats(0), stats.floats(1)
    out.label_files = [f.string(0) or "" for f in t.tables(6) if f.scalar(2, "b") == TENSOR_AXIS_LABELS]
    return out


class _MappedFile:
    """An mmap as the seekable file zipfile wants (reading it copies only what is read)."""

    def __init__(self, mapped):
        self._m = mapped
        mapped.seek(0)

    def seekable(self) -> bool:
        return True

    def __getattr__(self, name):
        return getattr(self._m, name)


def _seekable(data):
    return _MappedFile(data) if hasattr(data, "seek") else io.BytesIO(data)


def packed_files(data) -> list[str]:
    """Names of the files packed into the model as an appended zip ([] when none)."""
    try:
        with zipfile.ZipFile(_seekable(data)) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return []


def _read_packed(data, name: str) -> bytes:
    missing = f"its metadata names the labels file {name!r}, which is not packed in the model"
    if data.rfind(b"PK\x05\x06") < 0:     # no zip's end record at all: nothing was packed
        raise ValueError(missing + " (it has no packed files)")
    try:
        with zipfile.ZipFile(_seekable(data)) as z:
            try:
                info = z.getinfo(name)
            except KeyError:
                raise ValueError(missing) from None
            if info.file_size > MAX_LABELS_BYTES:
                raise ValueError(f"packed labels file {name!r} is {info.file_size} bytes")
            return z.read(info)
    except (zipfile.BadZipFile, OSError, NotImplementedError, EOFError, zlib.error) as e:
        raise ValueError(f"packed labels file {name!r} cannot be read ({e})") from None


def parse_labels(text: bytes) -> list[str]:
    """A labels file: one name per line (UTF-8); trailing empty lines are not classes."""
    lines = text.decode("utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def read_standard(blob: bytes, data) -> StandardMetadata:
    """Parse a TFLITE_METADATA buffer; `data` is the whole model file (for packed files)."""
    try:
        root = _root(blob, b"M001")
        md = StandardMetadata(*(root.string(i) or "" for i in (0, 1, 2, 4, 5, 7)))
        subgraphs = root.tables(3)
        if subgraphs:
            inputs, outputs = subgraphs[0].tables(2), subgraphs[0].tables(3)
            md.input = _tensor(inputs[0] if inputs else None)
            md.output = _tensor(outputs[0] if outputs else None)
        if md.output.label_files:
            md.labels = parse_labels(_read_packed(data, md.output.label_files[0]))
        return md
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed {STANDARD_NAME} metadata ({e})") from None
