"""Inference backends behind one small interface: TFLite (LiteRT, tflite-runtime, tf.lite)
and ONNX (onnxruntime, CPUExecutionProvider). Each is imported only when used."""
from __future__ import annotations

import functools
import importlib
import importlib.util
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BackendUnavailableError, ModelError, first_line
from .integrity import IntegrityError, check
from .metadata import METADATA_NAME
from .tflite_metadata import STANDARD_NAME, StandardMetadata, read_metadata, read_standard

# name → (file kind, module to import, pip extra that provides it)
BACKENDS = {
    "litert": ("tflite", "ai_edge_litert.interpreter", "tflite"),
    "tflite-runtime": ("tflite", "tflite_runtime.interpreter", "tflite-legacy"),
    "tensorflow": ("tflite", "tensorflow", None),
    "onnxruntime": ("onnx", "onnxruntime", "onnx"),
    # graph optimizations off: an int8 file's QDQ semantics computed in float, the same on
    # every CPU class (the reference int8 kernels are checked against; several times slower)
    "onnxruntime-reference": ("onnx", "onnxruntime", "onnx"),
}
# op types that make an ONNX graph an integer (quantized) one ("QuantizeLinear" also finds
# DequantizeLinear and DynamicQuantizeLinear)
_QUANTIZED_OPS = (b"QuantizeLinear", b"QLinear", b"ConvInteger", b"MatMulInteger")
KIND_BY_SUFFIX = {".tflite": "tflite", ".onnx": "onnx"}
# Neither format holds more in one file (flatbuffers and protobuf stop at 2 GiB); checked
# before anything is read, so a huge or sparse file costs nothing
MAX_MODEL_BYTES = 2 << 30


@dataclass
class TensorInfo:
    shape: tuple
    dtype: np.dtype
    scale: float = 0.0        # 0 = not quantized
    zero_point: int = 0


class Backend:
    """A loaded model: `run(x)` takes the input tensor and returns the first output."""
    name = ""
    kind = ""                 # "tflite" or "onnx"

    def __init__(self, path: Path, num_threads: int | None):
        self.path, self.num_threads = path, num_threads
        self.input: TensorInfo
        self.output: TensorInfo
        self.metadata: bytes | None = None                 # our JSON document
        self.standard: StandardMetadata | None = None      # standard TFLite Model Metadata
        self.digest: str | None = None                     # verified "sha256:…", None: none
        self.sealed_normalization: tuple | None = None      # see integrity.check

    @property
    def quantized(self) -> bool:
        """Whether integer kernels run this model (only ONNX files are asked, see OnnxBackend)."""
        return False

    def _checked_map(self) -> mmap.mmap:
        """The file mapped read-only (no copy in memory), after the size and identifier
        checks, with its digest verified when it carries one."""
        path = self.path
        try:
            size = path.stat().st_size
            if size > MAX_MODEL_BYTES:
                raise ModelError(f"{path}: model file is {size / 2**30:.1f} GiB, over the "
                                 f"{MAX_MODEL_BYTES >> 30} GiB a .{self.kind} file can hold")
            with open(path, "rb") as f:
                if self.kind == "tflite" and f.read(8)[4:8] != b"TFL3":
                    raise ModelError(f"{path}: not a TFLite model (no TFL3 file identifier)")
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ModelError(f"{path}: cannot read model file ({e.strerror or e})") from None
        try:
            self.digest, self.sealed_normalization = check(mapped)
        except IntegrityError as e:
            mapped.close()
            raise ModelError(f"{path}: {e}") from None
        return mapped

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TFLiteBackend(Backend):
    kind = "tflite"

    def __init__(self, path, num_threads, interpreter_cls, name):
        super().__init__(path, num_threads)
        self.name = name
        data = self._checked_map()
        try:
            try:
                entries = read_metadata(data)
            except ValueError as e:
                raise ModelError(f"{path}: not a valid TFLite model ({e})") from None
            self.metadata = entries.get(METADATA_NAME)
            if STANDARD_NAME in entries:
                try:
                    self.standard = read_standard(entries[STANDARD_NAME], data)
                except ValueError as e:
                    raise ModelError(f"{path}: {first_line(e)}") from None
                if self.sealed_normalization is not None:   # see integrity.check
                    self.standard.input.mean, self.standard.input.std = self.sealed_normalization
        finally:
            data.close()
        try:   # the interpreter maps the file itself: one copy, shared with the page cache
            self.interpreter = interpreter_cls(model_path=str(path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{path}: cannot load TFLite model ({_one_line(e)})") from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or not outputs:
            raise ModelError(f"{path}: expected 1 image input, found {len(inputs)} inputs")
        self._in, self._out = inputs[0]["index"], outputs[0]["index"]
        self.input, self.output = (TensorInfo(tuple(int(d) for d in t["shape"]), np.dtype(t["dtype"]),
                                              float(t["quantization"][0]), int(t["quantization"][1]))
                                   for t in (inputs[0], outputs[0]))

    def run(self, x):
        try:
            self.interpreter.set_tensor(self._in, x)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self._out).copy()
        except (RuntimeError, ValueError) as e:   # a damaged graph can load yet fail here
            raise ModelError(f"{self.path}: inference failed ({_one_line(e)})") from None


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
              "tensor(float16)": np.float16}


class OnnxBackend(Backend):
    name = "onnxruntime"
    kind = "onnx"

    def __init__(self, path, num_threads, ort, reference: bool = False):
        super().__init__(path, num_threads)
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        options.log_severity_level = 3
        if reference:
            self.name = "onnxruntime-reference"
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self._checked_map().close()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ModelError(f"{path}: cannot load ONNX model ({_one_line(e)})") from None
        try:
            meta = self.session.get_modelmeta().custom_metadata_map
        except UnicodeDecodeError:
            raise ModelError(f"{path}: ONNX metadata_props are not valid UTF-8") from None
        self.metadata = meta[METADATA_NAME].encode() if METADATA_NAME in meta else None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{path}: expected 1 image input, found {len(inputs)} inputs")
        self._in = inputs[0].name
        shape = tuple(d if isinstance(d, int) else 1 for d in inputs[0].shape)
        if inputs[0].type not in _ORT_TYPES:
            raise ModelError(f"{path}: unsupported input type {inputs[0].type}")
        self.input = TensorInfo(shape, np.dtype(_ORT_TYPES[inputs[0].type]))
        out_shape = tuple(d if isinstance(d, int) else 1 for d in outputs[0].shape)
        self.output = TensorInfo(out_shape, np.dtype(_ORT_TYPES.get(outputs[0].type, np.float32)))

    @functools.cached_property
    def quantized(self) -> bool:
        """Whether the graph holds integer ops: a scan of the file for their op-type names,
        made only when asked (tens of ms for a large float file), not at every load."""
        try:
            with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return any(mapped.find(op) >= 0 for op in _QUANTIZED_OPS)
        except OSError:
            return False

    def run(self, x):
        try:
            return self.session.run(None, {self._in: x})[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ModelError(f"{self.path}: inference failed ({_one_line(e)})") from None


def _one_line(error: BaseException, limit: int = 200) -> str:
    """A native library's error as one readable line: its first line, runs of whitespace
    folded, and where XNNPACK/TFLite run sentences together ("...failed.Node..."), a space."""
    text = " ".join(first_line(error).split())
    text = re.sub(r"(?<=[a-z)\]])\.(?=[A-Z])", ". ", text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _interpreter_class(name: str):
    if name == "tensorflow":
        tf = _import("tensorflow")
        return tf.lite.Interpreter if tf is not None else None
    mod = _import(BACKENDS[name][1])
    return getattr(mod, "Interpreter", None) if mod is not None else None


def available_backends(kind: str | None = None) -> list[str]:
    return [n for n, (k, module, _) in BACKENDS.items()
            if (kind is None or k == kind) and importlib.util.find_spec(module.split(".")[0])]


def open_model(path: str | os.PathLike, backend: str | None = None,
               num_threads: int | None = None) -> Backend:
    """Load `path` with `backend`, or the first available backend for its file type."""
    path = Path(path)
    kind = KIND_BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        raise ModelError(f"{path}: unknown model type (expected a .tflite or .onnx file)")
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: model file is empty (0 bytes)")
    if backend is not None:
        if backend not in BACKENDS:
            raise ModelError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if BACKENDS[backend][0] != kind:
            raise ModelError(f"{path}: backend {backend} cannot run .{kind} files")
        candidates = [backend]
    else:
        candidates = [n for n, (k, _, _) in BACKENDS.items() if k == kind and n != "onnxruntime-reference"]
    for name in candidates:
        if kind == "onnx":
            ort = _import("onnxruntime")
            if ort is not None:
                return OnnxBackend(path, num_threads, ort, reference=name == "onnxruntime-reference")
        else:
            cls = _interpreter_class(name)
            if cls is not None:
                return TFLiteBackend(path, num_threads, cls, name)
    extras = sorted({BACKENDS[n][2] for n in candidates if BACKENDS[n][2]})
    hint = " or ".join(f"pip install 'effnet-lite-edge[{e}]'" for e in extras)
    raise BackendUnavailableError(
        f"{path}: no {'/'.join(candidates)} backend is installed to run .{kind} files: {hint}")
