"""int8 ONNX files give their own answers on every CPU class (model_export/quantize.py,
"pair-safe" weights): onnxruntime's fused int8 kernels against the file's QDQ semantics
(graph optimizations off, the `onnxruntime-reference` backend) on real photos, here and under
qemu-x86_64 as other x86 classes; the rule itself; what the runtime says about others' files.

A control file with TFLite's plain 8-bit weights shows that the check can fail: on x86
without VNNI (this CPU or an emulated Haswell) its fused answers leave the reference.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DEV_DIR, calibrated_lite0, dev_rows, skimage_photos, write_plain_int8_onnx
from effnet_lite import Classifier, ClassifierOptions
from effnet_lite.cpu import classify, int8_class, merge_features
from effnet_lite.model_export.quantize import PAIR_LIMIT, adjacent_pairs, pair_sum
from tests_helpers import require_module, run_module, unavailable

require_module("onnxruntime", "int8 ONNX files need onnxruntime (onnx extra)")
# Fused kernels vs the reference semantics. Both round each layer's output to the nearest
# step from a slightly different value (exact int32 then a float scale, against a float
# convolution), so 1-step differences arise and grow along the network: up to 4 steps of the
# logits' int8 scale on the dev photos (saturated: 47-99), which flips the top-1 of the
# photos whose two best classes are that close (1-4 of 200; 99.5 % asked for in issue 18 is
# not reachable by rounding alone). The saturated files score 84-96 % top-1.
MAX_STEPS = 8
MIN_TOP1_SAME = 0.975
EMULATED_PHOTOS = 8         # qemu runs onnxruntime ~100x slower than the host


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Lite0 calibrated once: pair-safe U8S8 and S8S8 files, and the plain 8-bit control."""
    exporter = calibrated_lite0(tmp_path_factory)
    out = tmp_path_factory.mktemp("onnx_int8")
    paths = {}
    for name, io in (("u8s8", "uint8"), ("s8s8", "int8")):
        paths[name] = out / f"lite0_{name}.onnx"
        exporter.export(paths[name], "int8", "onnx", io, verify=False)
    paths["plain"] = write_plain_int8_onnx(exporter, out / "lite0_plain_u8s8.onnx")
    with Classifier.from_file(paths["plain"]) as clf:
        assert clf.metadata.pair_safe is False
    paths["exporter"] = exporter
    return paths


@pytest.fixture(scope="module")
def crops(files):
    """Real photos as the runtime crops them: all 200 dev photos, else scikit-image's."""
    from effnet_lite.preprocess import preprocess
    config = files["exporter"].config
    try:
        sources = [r["path"] for r in dev_rows()]
    except pytest.skip.Exception:
        sources = list(skimage_photos().values())
    return np.stack([preprocess(s, config) for s in sources])


def outputs(path, crops, backend=None) -> np.ndarray:
    with Classifier.from_file(path, ClassifierOptions(backend=backend, num_threads=1)) as clf:
        return np.stack([clf.io.dequantize(clf.backend.run(clf.io.to_input(c))) for c in crops])


def agreement(fused, reference, step) -> tuple[float, float]:
    """(share of the same top-1, largest difference in output steps)."""
    return (float(np.mean(fused.argmax(1) == reference.argmax(1))),
            float(np.abs(fused - reference).max() / step))


def logit_step(exporter) -> float:
    return exporter.quantized.act["logits"].scale


def test_pair_safe_rule(files):
    """Every non-depthwise op of the ONNX weights keeps each same-sign pair the kernels add in
    int16 within range for uint8 activations (255 x 128 <= 32767): neighbour input channels of
    pointwise weights, any two weights of the others. The rule binds (TFLite's 8-bit weights
    break it) and costs at most one bit; depthwise weights stay 8-bit."""
    qg = files["exporter"].quantized
    assert 255 * PAIR_LIMIT <= 32767 < 255 * (PAIR_LIMIT + 1)
    broken = bound = 0
    for op in qg.graph.ops:
        if op.weight is None:
            continue
        safe, plain = qg.pair_safe[op.output], qg.weights[op.output]
        if op.kind == "dwconv":
            assert safe is plain
            continue
        assert (pair_sum(safe.weight, adjacent_pairs(op)) <= PAIR_LIMIT).all(), op.output
        assert np.abs(safe.weight.astype(int)).max() <= 127
        assert (safe.scales >= plain.scales).all() and (safe.scales <= 2.01 * plain.scales).all()
        broken += int((pair_sum(plain.weight, adjacent_pairs(op)) > PAIR_LIMIT).sum())
        bound += int((safe.scales > plain.scales).sum())
    assert broken > 0 and bound > 0, (broken, bound)


@pytest.mark.parametrize("name", ["u8s8", "s8s8"])
def test_fused_kernels_give_the_files_own_answers(files, crops, name):
    """onnxruntime's fused int8 kernels on this CPU = the file's QDQ semantics."""
    reference = outputs(files[name], crops, "onnxruntime-reference")
    same, steps = agreement(outputs(files[name], crops), reference, logit_step(files["exporter"]))
    print(f"\n{name} on {int8_class().name}: fused = reference top-1 on {same:.1%} of {len(crops)} "
          f"photos, largest difference {steps:.1f} steps")
    assert steps <= MAX_STEPS and same >= MIN_TOP1_SAME, (same, steps)


def _with_layer_outputs(path, out):
    """The file with every quantized tensor as a graph output (the fused nodes make them)."""
    import onnx
    from onnx import helper
    model = onnx.load(path)
    kind = model.graph.input[0].type.tensor_type.elem_type
    layers = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    model.graph.output.extend(helper.make_tensor_value_info(q, kind, None) for q in layers)
    onnx.save(model, out)
    return model, layers


@pytest.mark.parametrize("name", ["u8s8", "s8s8"])
def test_each_fused_convolution_is_exact(files, crops, tmp_path, name):
    """The kernels themselves: every fused convolution, fed its own fused input, equals exact
    integer arithmetic (int64 sums, then the file's scales) within one rounding step. Where
    products saturate (the plain file on this CPU class) whole channels are off by tens."""
    import onnx.numpy_helper as nh
    import onnxruntime as ort
    import torch
    from onnx.helper import get_attribute_value
    model, layers = _with_layer_outputs(files[name], tmp_path / "layers.onnx")
    init = {i.name: nh.to_array(i) for i in model.graph.initializer}
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    session = ort.InferenceSession(str(tmp_path / "layers.onnx"), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    signed = name == "s8s8"
    lo, hi = (-128, 127) if signed else (0, 255)
    worst = 0.0
    for crop in crops[:3]:
        x = crop.transpose(2, 0, 1)[None]
        x = (x.astype(np.int16) - 128).astype(np.int8) if signed else np.ascontiguousarray(x)
        got = dict(zip(names, session.run(None, {"input": x})))
        for node in (n for n in model.graph.node if n.op_type == "Conv"):
            out, src = node.output[0][:-2], node.input[0]
            q_in = x if src == "input/dq" else got[src + "/q"]
            attrs = {a.name: get_attribute_value(a) for a in node.attribute}
            top, left, bottom, right = attrs["pads"]
            xi = torch.from_numpy(q_in.astype(np.float64) - float(init[src + "/zp"]))
            acc = torch.nn.functional.conv2d(
                torch.nn.functional.pad(xi, (left, right, top, bottom)),
                torch.from_numpy(init[out + "/weight/q"].astype(np.float64)),
                torch.from_numpy(init[out + "/bias/q"].astype(np.float64)),
                stride=attrs["strides"][0], groups=attrs["group"]).numpy()[0]
            scale = float(init[src + "/scale"]) * init[out + "/weight/scale"].astype(np.float64)
            exact = np.clip(np.round(acc * scale[:, None, None] / float(init[out + "/scale"]))
                            + float(init[out + "/zp"]), lo, hi)
            worst = max(worst, float(np.abs(exact - got[out + "/q"][0]).max()))
    print(f"\n{name}: fused convolutions vs exact integer arithmetic: up to {worst:g} step(s)")
    assert len(layers) > 50 and worst <= 1, worst


def test_plain_weights_saturate_where_the_cpu_does(files, crops):
    """The control: on a CPU class whose kernels add products in int16, the plain 8-bit file
    leaves its reference (so the check above can fail here); elsewhere it is reported."""
    step = logit_step(files["exporter"])
    same, steps = agreement(outputs(files["plain"], crops),
                            outputs(files["plain"], crops, "onnxruntime-reference"), step)
    print(f"\nplain 8-bit on {int8_class().name}: top-1 same {same:.1%}, up to {steps:.1f} steps")
    if int8_class().saturates:
        assert steps > 2 * MAX_STEPS, steps


def _qemu() -> str:
    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if qemu is None:
        unavailable("qemu-x86_64 is not installed (apt-get install qemu-user-static)")
    return qemu


EMULATED = """
import json, sys
import numpy as np
from effnet_lite import Classifier, ClassifierOptions
from effnet_lite.cpu import int8_class
crops = np.load(sys.argv[1])
result = {"class": int8_class().name}
for path in sys.argv[3:]:
    with Classifier.from_file(path, ClassifierOptions(num_threads=1)) as clf:
        result[path] = np.stack([clf.io.dequantize(clf.backend.run(clf.io.to_input(c)))
                                 for c in crops]).tolist()
open(sys.argv[2], "w").write(json.dumps(result))
"""


@pytest.mark.parametrize("cpu, core, expected", [("Haswell-noTSX", "Haswell", "x86-64 AVX2 (no VNNI)"),
                                                 ("Nehalem", "Nehalem", "x86-64 SSE4 (no AVX2)")])
def test_other_x86_classes_under_qemu(files, crops, tmp_path, cpu, core, expected):
    """The same check with qemu-user as another x86 CPU: onnxruntime picks its kernels by the
    emulated CPUID. Haswell (AVX2, no VNNI) shows the failure on any host, a VNNI one too;
    qemu 7.2's TCG emulates up to AVX2 and cannot emulate AVX-512 or VNNI."""
    qemu = _qemu()
    chosen = crops[:EMULATED_PHOTOS]
    np.save(tmp_path / "crops.npy", chosen)
    names = ["u8s8", "plain"]
    # the interpreter as this one was started (a venv's own link, not its target): it then finds
    # its pyvenv.cfg and site-packages, where an editable install's .pth hook makes effnet_lite importable
    done = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", EMULATED,
                           str(tmp_path / "crops.npy"), str(tmp_path / "out.json"),
                           *(str(files[n]) for n in names)],
                          capture_output=True, text=True, timeout=900,
                          # numpy's OpenBLAS, under qemu-user on an AVX-VNNI host, took the emulated
                          # Nehalem for a Haswell and died of an illegal AVX2 instruction at import
                          env={**os.environ, "OPENBLAS_CORETYPE": core})
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["class"] == expected
    step = logit_step(files["exporter"])
    for name in names:
        reference = outputs(files[name], chosen, "onnxruntime-reference")
        same, steps = agreement(np.asarray(got[str(files[name])]), reference, step)
        print(f"\n{name} under qemu -cpu {cpu} ({got['class']}): top-1 same {same:.0%}, "
              f"up to {steps:.1f} steps")
        if name == "u8s8":
            assert same == 1.0 and steps <= MAX_STEPS, (same, steps)
        elif expected == classify("x86_64", {"AVX2"}).name:    # the saturating class
            assert steps > 2 * MAX_STEPS, steps
        else:                                # SSE4 kernels widen to 16 bits: no saturation
            assert steps <= MAX_STEPS, steps


def _pair_probe(channels: int, pair: tuple) -> bytes:
    """A QDQ pointwise convolution with weight 100 on two input channels (0 elsewhere): fed 255
    everywhere its exact output is 51,000, past int16, so a kernel that adds those two
    products in int16 saturates (to 32,767, 33,000 at the output's step of 1,000)."""
    from onnx import TensorProto, helper, numpy_helper
    w = np.zeros((16, channels, 1, 1), np.int8)
    w[:, list(pair)] = 100
    arrays = {"s": np.float32(1), "zp": np.uint8(0), "wq": w, "ws": np.ones(16, np.float32),
              "wzp": np.zeros(16, np.int8), "os": np.float32(1000), "ozp": np.uint8(0)}
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "zp"], ["xf"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["wf"], axis=0),
             helper.make_node("Conv", ["xf", "wf"], ["yf"], kernel_shape=[1, 1]),
             helper.make_node("QuantizeLinear", ["yf", "os", "ozp"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "os", "ozp"], ["y"])]
    graph = helper.make_graph(nodes, "pair_probe", [helper.make_tensor_value_info("x", TensorProto.UINT8,
                                                                                 [1, channels, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in arrays.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


PAIR_PROBE = """
import json, sys
import numpy as np, onnxruntime as ort
out = {}
for path in sys.argv[2:]:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.full(s.get_inputs()[0].shape, 255, np.uint8)
    out[path] = float(s.run(None, {"x": x})[0].max())
open(sys.argv[1], "w").write(json.dumps(out))
"""


def test_saturating_kernels_pair_neighbour_input_channels(tmp_path):
    """What the pointwise pair rule rests on (quantize.py): onnxruntime's AVX2 kernels add the
    products of input channels (2i, 2i+1) in int16, and no others. Under an emulated Haswell
    two large weights on such a pair saturate; on any other two channels they do not (if the
    kernels ever paired differently, the second half of this fails)."""
    qemu = _qemu()
    cases = {(c, pair): tmp_path / f"probe_{c}_{pair[0]}_{pair[1]}.onnx"
             for c in (16, 96) for pair in ((0, 1), (6, 7), (0, 2), (1, 2), (3, 4), (0, 9))}
    for (c, pair), path in cases.items():
        path.write_bytes(_pair_probe(c, pair))
    done = subprocess.run([qemu, "-cpu", "Haswell-noTSX", sys.executable, "-c", PAIR_PROBE,
                           str(tmp_path / "out.json"), *map(str, cases.values())],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads((tmp_path / "out.json").read_text())
    for (c, pair), path in cases.items():
        expected = 33000.0 if pair[1] == pair[0] + 1 and pair[0] % 2 == 0 else 51000.0
        assert got[str(path)] == expected, (c, pair, got[str(path)])


def test_cpu_classes():
    """The class names and which ones saturate, from the CPU flags."""
    assert classify("x86_64", {"AVX2", "AVX512F", "AVX512BW", "AVX512VNNI"}) .name == "x86-64 VNNI"
    assert classify("x86_64", {"AVX2", "AVXVNNI"}).saturates is False
    assert classify("x86_64", {"AVX2", "AVX512BW"}).saturates is True
    assert classify("x86_64", {"AVX2", "FMA3"}) .saturates is True
    assert classify("x86_64", {"SSE41"}).saturates is False
    assert classify("aarch64", {"ASIMD", "ASIMDDP"}).name == "arm64 with dot product"
    assert classify("aarch64", {"ASIMD"}).saturates is False
    # AVX-VNNI is taken from /proc/cpuinfo (numpy does not probe it), unless cpuinfo describes
    # another CPU than numpy's probe of this process: the host's under an emulated Haswell
    host = "flags : sse4_2 avx2 avx512f avx512bw avx_vnni avx512_vnni\n"
    haswell = {"AVX2": True, "AVX512F": False, "AVX512BW": False, "AVX512VNNI": False}
    assert "AVXVNNI" not in merge_features(haswell, host)
    assert classify("x86_64", merge_features(haswell, host)).name == "x86-64 AVX2 (no VNNI)"
    alder_lake = {"AVX2": True, "AVX512F": False, "AVX512BW": False, "AVX512VNNI": False}
    assert "AVXVNNI" in merge_features(alder_lake, "flags : sse4_2 avx2 avx_vnni\n")
    assert merge_features(None, host) >= {"AVX2", "AVX512VNNI", "AVXVNNI"}
    here = int8_class()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if " avx2 " in flags and "vnni" not in flags:
        assert here.name == "x86-64 AVX2 (no VNNI)" and here.saturates
    elif "vnni" in flags:
        assert here.name == "x86-64 VNNI" and not here.saturates


def test_others_int8_onnx_file_gets_a_caveat(files, monkeypatch):
    """A file without pair-safe weights (here: the plain control, and the same without our
    metadata, as another tool writes it): the API, effnet-infer and the caveat's wording say
    that its answers may differ on a saturating CPU; ours get no caveat anywhere."""
    import onnx
    foreign = files["plain"].with_name("foreign.onnx")
    model = onnx.load(files["plain"])
    del model.metadata_props[:]
    onnx.save(model, foreign)
    import effnet_lite.classifier
    from effnet_lite.cpu import Int8Class
    for saturates in (True, False):
        monkeypatch.setattr(effnet_lite.classifier, "int8_class", lambda s=saturates: Int8Class("test class", s))
        with Classifier.from_file(files["u8s8"]) as ours, Classifier.from_file(foreign) as theirs, \
                Classifier.from_file(files["plain"]) as plain:
            assert ours.backend.quantized and theirs.backend.quantized
            assert ours.int8_caveat == ""
            if saturates:
                assert "was not made by effnet-lite-edge" in theirs.int8_caveat
                assert "was not made pair-safe" in plain.int8_caveat
                assert "test class" in theirs.int8_caveat and "may differ" in theirs.int8_caveat
            else:
                assert theirs.int8_caveat == plain.int8_caveat == ""
    monkeypatch.undo()
    photo = DEV_DIR / "n01440764_tench.JPEG"
    if not photo.is_file():
        from conftest import photo_folder
        photo = next(photo_folder(foreign.parent / "p").iterdir())
    code, _, err = run_module("effnet_lite.apps.infer", photo, "--model", foreign, "-v")
    assert code == 0, err
    assert f"cpu: int8 class {int8_class().name}; file: int8 weights not known to be pair-safe" in err
    assert ("may differ from other machines'" in err) == int8_class().saturates, err
    code, _, err = run_module("effnet_lite.apps.infer", photo, "--model", files["u8s8"], "-v")
    assert code == 0 and "pair-safe int8 weights" in err and "warning" not in err, err
