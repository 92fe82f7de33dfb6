"""The exported files: parity with PyTorch, integer-only graphs, XNNPACK delegation,
ONNX/TFLite agreement, I/O types, metadata, onnxruntime fusion."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from tests_helpers import require_module
import torch

from conftest import built_once, calibrated_lite0, nchw_batch, write_plain_int8_onnx
from effnet_lite import Classifier, ClassifierOptions
from effnet_lite.metadata import METADATA_NAME, TFLITE_ELSEWHERE, ModelMetadata
from effnet_lite.tflite_metadata import read_metadata

ai_edge_litert = require_module("ai_edge_litert", "the export tests need LiteRT (tflite extra)")
from ai_edge_litert import schema_py_generated as tfl  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    """Lite0 calibrated once; every file in this module is written from it (once per run,
    whichever worker asks first: the module's tests are spread over the workers)."""
    exporter = calibrated_lite0(tmp_path_factory)
    outputs = [("fp32.tflite", "fp32", "tflite", None), ("fp32.onnx", "fp32", "onnx", None),
               ("int8.tflite", "int8", "tflite", "int8"), ("uint8.tflite", "int8", "tflite", "uint8"),
               ("float_io.tflite", "int8", "tflite", "float32"), ("u8s8.onnx", "int8", "onnx", "uint8"),
               ("s8s8.onnx", "int8", "onnx", "int8")]

    def build(out: Path) -> None:
        for name, precision, fmt, io in outputs:
            result = exporter.export(out / name, precision, fmt, io)
            assert result.cosine > 0.95, (name, result)
    out = built_once("export-files-lite0", build)
    exporter.files = {name: out / name for name, *_ in outputs}
    return exporter


def raw_outputs(path, images) -> np.ndarray:
    """Dequantized logits of a file, fed through the runtime's own preprocessing."""
    clf = Classifier.from_file(path)
    return np.stack([clf.io.dequantize(clf.backend.run(clf.preprocess(image))) for image in images])


@pytest.mark.parametrize("name", ["fp32.tflite", "fp32.onnx"])
def test_fp32_files_match_folded_pytorch(lite0, photos, name):
    from effnet_lite.model_export.folding import fold_batchnorm
    folded = fold_batchnorm(lite0.model)
    with torch.no_grad():
        ref = folded(torch.from_numpy(nchw_batch(list(photos.values()), "lite0"))).numpy()
    got = raw_outputs(lite0.files[name], list(photos.values()))
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def tflite_model(path) -> "tfl.ModelT":
    return tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(path.read_bytes(), 0))


def test_int8_tflite_holds_no_float_tensor(lite0):
    model = tflite_model(lite0.files["int8.tflite"])
    types = collections.Counter(t.type for t in model.subgraphs[0].tensors)
    assert tfl.TensorType.FLOAT32 not in types
    assert set(types) == {tfl.TensorType.INT8, tfl.TensorType.INT32}
    ops = {model.operatorCodes[o.opcodeIndex].builtinCode for o in model.subgraphs[0].operators}
    assert ops == {tfl.BuiltinOperator.CONV_2D, tfl.BuiltinOperator.DEPTHWISE_CONV_2D,
                   tfl.BuiltinOperator.ADD, tfl.BuiltinOperator.MEAN,
                   tfl.BuiltinOperator.FULLY_CONNECTED}


def test_float_io_only_at_the_edges(lite0):
    sg = tflite_model(lite0.files["float_io.tflite"]).subgraphs[0]
    floats = [i for i, t in enumerate(sg.tensors) if t.type == tfl.TensorType.FLOAT32]
    assert sorted(floats) == sorted([sg.inputs[0], sg.outputs[0]])


def delegated(path) -> tuple[int, bool]:
    """(number of XNNPACK partitions, whether one partition runs the whole graph)."""
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    ops = it._get_ops_details()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    original = [o for o in ops if o["op_name"] != "DELEGATE"]
    if len(delegates) != 1:
        return len(delegates), False
    d = delegates[0]
    consumed = set(d["inputs"].tolist())
    weights = {i for o in original for i in o["inputs"].tolist()} - {
        o for op in original for o in op["outputs"].tolist()}
    whole = (it.get_input_details()[0]["index"] in consumed and weights <= consumed
             and set(d["outputs"].tolist()) == {it.get_output_details()[0]["index"]})
    return 1, whole


@pytest.mark.parametrize("name", ["int8.tflite", "fp32.tflite", "float_io.tflite"])
def test_every_op_is_taken_by_xnnpack(lite0, name):
    partitions, whole = delegated(lite0.files[name])
    assert partitions == 1 and whole


def test_io_variants_compute_the_same_model(lite0, photos):
    images = list(photos.values())
    base = raw_outputs(lite0.files["int8.tflite"], images)
    # uint8 and float32 I/O only re-encode the input exactly: identical integer outputs
    for name in ("uint8.tflite", "float_io.tflite"):
        assert np.array_equal(raw_outputs(lite0.files[name], images), base), name
    # onnxruntime rounds intermediate requantizations its own way (and runs S8S8
    # depthwise convs in float on x86): a few output steps apart, not more
    step = lite0.quantized.act["logits"].scale
    for name in ("u8s8.onnx", "s8s8.onnx"):
        got = raw_outputs(lite0.files[name], images)
        assert np.abs(got - base).mean() < 3 * step, name
        assert got[1].argmax() == base[1].argmax() == 967, name   # the espresso is no near-tie


def test_int8_onnx_and_tflite_agree_on_dev_photos(lite0, dev, tmp_path):
    """One calibration, two writers: an ONNX file with the TFLite file's own 8-bit weights,
    run by its QDQ semantics, answers as the TFLite file does; the shipped ONNX file, whose
    weights are pair-safe (one bit coarser at most), nearly so (measured: 97 % of 200)."""
    paths = [r["path"] for r in dev]
    plain = write_plain_int8_onnx(lite0, tmp_path / "plain.onnx")
    a = raw_outputs(lite0.files["int8.tflite"], paths).argmax(1)
    clf = Classifier.from_file(plain, ClassifierOptions(backend="onnxruntime-reference"))
    same_weights = np.stack([clf.backend.run(clf.preprocess(p)).reshape(-1) for p in paths]).argmax(1)
    assert np.mean(a == same_weights) >= 0.99
    assert np.mean(a == raw_outputs(lite0.files["u8s8.onnx"], paths).argmax(1)) >= 0.95


def test_onnxruntime_fuses_the_qdq_graph(lite0, tmp_path):
    import onnx
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(lite0.files["u8s8.onnx"]), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] == 49 and ops["QLinearAdd"] == 9 and ops["QGemm"] == 1
    assert ops["Conv"] == 0 and ops["Add"] == 0


def test_onnx_model_passes_the_checker(lite0):
    import onnx
    for name in ("fp32.onnx", "u8s8.onnx", "s8s8.onnx"):
        onnx.checker.check_model(onnx.load(str(lite0.files[name])), full_check=True)


def test_metadata_is_embedded(lite0):
    import onnx
    tfl_meta = Classifier.from_file(lite0.files["uint8.tflite"]).metadata   # JSON + standard metadata
    props = {p.key: p.value for p in onnx.load(str(lite0.files["s8s8.onnx"])).metadata_props}
    onnx_meta = ModelMetadata.from_json(props[METADATA_NAME])
    for meta in (tfl_meta, onnx_meta):
        assert meta.variant == "lite0" and meta.input_size == 224 and meta.precision == "int8"
        assert meta.crop_pct == 0.875 and meta.interpolation == "bicubic"
        assert len(meta.labels) == 1000 and meta.labels[967] == "espresso"
        assert meta.calibration["method"] == "mse" and meta.calibration["images"] > 0
        assert meta.exporter.startswith("effnet-lite-edge")
    assert tfl_meta.layout == "NHWC" and onnx_meta.layout == "NCHW"
    assert tfl_meta.input_dtype == "uint8" and tfl_meta.input_zero_point == 128
    assert onnx_meta.input_dtype == "int8" and onnx_meta.input_zero_point == 0
    fp32 = Classifier.from_file(lite0.files["fp32.tflite"]).metadata
    assert fp32.mean == [0.5] * 3 and fp32.precision == "fp32"
    # the .tflite JSON leaves out what the standard metadata and the tensors state
    own = json.loads(read_metadata(lite0.files["uint8.tflite"].read_bytes())[METADATA_NAME])
    assert not set(own) & set(TFLITE_ELSEWHERE) and own["crop_pct"] == 0.875


def test_both_writers_serialize_the_same_parameters(lite0):
    """The int8 ONNX file's activation parameters are the TFLite file's, its depthwise weights
    the very same arrays; its other weights are the pair-safe set of the same calibration."""
    import onnx
    from onnx import numpy_helper
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(lite0.files["s8s8.onnx"])).graph.initializer}
    sg = tflite_model(lite0.files["int8.tflite"]).subgraphs[0]
    model = tflite_model(lite0.files["int8.tflite"])
    by_name = {t.name.decode(): t for t in sg.tensors}
    stem_w = by_name["t0/weights"]
    data = np.frombuffer(model.buffers[stem_w.buffer].data.tobytes(), np.int8).reshape(stem_w.shape)
    qg = lite0.quantized
    assert np.array_equal(data.transpose(0, 3, 1, 2), qg.weights["t0"].weight)
    assert np.array_equal(inits["t0/weight/q"], qg.pair_safe["t0"].weight)
    assert np.allclose(inits["t0/weight/scale"], qg.pair_safe["t0"].scales)
    dw = next(op.output for op in qg.graph.ops if op.kind == "dwconv")
    dw_t = by_name[f"{dw}/weights"]
    dw_data = np.frombuffer(model.buffers[dw_t.buffer].data.tobytes(), np.int8).reshape(dw_t.shape)
    assert np.array_equal(dw_data.transpose(3, 0, 1, 2), inits[f"{dw}/weight/q"])
    assert np.allclose(dw_t.quantization.scale, inits[f"{dw}/weight/scale"])
    checked = 0
    for name, t in by_name.items():
        if "/" not in name and f"{name}/scale" in inits:      # activations
            assert np.isclose(t.quantization.scale[0], inits[f"{name}/scale"])
            assert t.quantization.zeroPoint[0] == inits[f"{name}/zp"]
            checked += 1
    assert checked == 59      # one per op output but the logits (float in ONNX)


def test_mse_errors_equal_their_definition(lite0_files):
    """The prefix-sum MSE search gives, for every candidate range, the error summed bin by
    bin (clipped below, clipped above, rounding inside), on real activation histograms and
    on random ones with ranges that cut bins exactly at their centres."""
    from effnet_lite.model_export.calibration import collect, mse_errors
    from effnet_lite.model_export.graph import with_pixel_input
    exporter = lite0_files["exporter"]
    collector = collect(with_pixel_input(exporter.graph), exporter.samples[:2])
    rng = np.random.default_rng(0)
    cases = [(collector.hist[n], min(collector.lo[n], 0.0), max(collector.hi[n], 0.0)) for n in sorted(collector.hist)[::6]]
    cases += [(rng.integers(0, 50, 64).astype(float), -rng.uniform(0, 3), rng.uniform(0.1, 3)) for _ in range(20)]
    for hist, lo, hi in cases:
        edges = np.linspace(lo, hi, len(hist) + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        fractions = np.linspace(0.2, 1.0, 9)
        los = np.concatenate([lo * fractions, centers[centers < 0][:2]]) if lo < 0 else np.zeros(1)
        his = np.concatenate([hi * fractions, centers[centers > 0][-2:]])
        fast = mse_errors(hist, centers, los, his)
        for i, l in enumerate(los):
            for j, h in enumerate(his):
                step = (h - l) / 255.0
                inside = (centers >= l) & (centers <= h)
                slow = (hist * (np.clip(l - centers, 0, None) ** 2 + np.clip(centers - h, 0, None) ** 2
                                + inside * step ** 2 / 12)).sum()
                assert fast[i, j] == pytest.approx(slow, rel=1e-9, abs=1e-9 * hist.sum()), (l, h)


def test_range_estimators(lite0_files, tmp_path):
    """--estimator: minmax keeps the observed extremes of every activation, percentile and
    mse clip within them (somewhere strictly), the logits are never clipped; a percentile
    file records its method and still names the photo."""
    from effnet_lite import Classifier
    from effnet_lite.model_export.calibration import ESTIMATORS, collect
    from effnet_lite.model_export.graph import OUTPUT, with_pixel_input
    from effnet_lite.model_export.cli import main as export_main
    exporter = lite0_files["exporter"]
    collector = collect(with_pixel_input(exporter.graph), exporter.samples)
    ranges = {e: collector.ranges(e) for e in ESTIMATORS}
    assert set(ESTIMATORS) == {"minmax", "percentile", "mse"}
    for name in collector.lo:
        lo, hi = min(collector.lo[name], 0.0), max(collector.hi[name], 0.0)
        assert ranges["minmax"][name] == (lo, hi)
        for e in ("percentile", "mse"):
            a, b = ranges[e][name]
            assert lo - 1e-9 <= a <= 0 <= b <= hi + 1e-9, (e, name, (a, b), (lo, hi))
    for e in ("percentile", "mse"):
        narrower = [n for n in collector.lo if ranges[e][n][1] - ranges[e][n][0] < 0.99 * (
            ranges["minmax"][n][1] - ranges["minmax"][n][0])]
        assert narrower, f"{e} clipped nothing"
        assert ranges[e][OUTPUT] == ranges["minmax"][OUTPUT]
    out = tmp_path / "percentile.tflite"
    assert export_main(["lite0", "--calib-dir", str(lite0_files["photos"]), "--estimator", "percentile",
                        "-o", str(out)]) == 0
    clf = Classifier.from_file(out)
    assert clf.metadata.calibration["method"] == "percentile"
    assert clf.classify(str(lite0_files["photos"] / "coffee.jpg")).categories[0].label == "espresso"
