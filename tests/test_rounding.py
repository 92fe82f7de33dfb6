"""Learned rounding (model_export/rounding.py) and the pair rule it must keep for ONNX."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import photo_folder
from effnet_lite import Classifier
from effnet_lite.model_export.cli import main
from effnet_lite.model_export.export import Exporter
from effnet_lite.model_export.folding import fold_batchnorm
from effnet_lite.model_export.calibration import pixels_to_input
from effnet_lite.model_export.graph import build_graph, run, with_pixel_input
from effnet_lite.model_export.quantize import (PAIR_LIMIT, adjacent_pairs, pair_sum, quantize_graph,
                                               quantize_weights)
from effnet_lite.model_export.rounding import _input_moments, round_layer, second_moments
from effnet_lite.model_export.weights import load_model


def output_error(weight, q, scales, h) -> float:
    """Σ over rows of dᵀ H d, d the row's weight error: the layer's mean squared output error."""
    d = (q.astype(np.float64) * scales.reshape(-1, 1) - weight).reshape(len(weight), -1)
    return float(np.einsum("ok,kl,ol->", d, h, d))


def correlated_inputs(k: int, rows: int = 4000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, k)) @ rng.normal(size=(k, k)) + rng.normal(size=k)
    return x.T @ x / rows


def test_pair_rule_flags_one_overflowing_pair():
    q = np.zeros((3, 8), np.int8)
    q[0, :2] = [127, 1]          # 128: the most the int16 pair sum allows with uint8 inputs
    q[1, 3:5] = [-100, -28]
    q[2, [1, 6]] = [127, 2]      # 129: one pair too many, in one row
    assert list(pair_sum(q)) == [128, 128, 129]
    assert (pair_sum(q) > PAIR_LIMIT).tolist() == [False, False, True]
    # quantize_weights' pair-safe set never has such a row, however the weights lie
    w = np.random.default_rng(1).normal(size=(64, 32)) * np.linspace(0.1, 3, 32)
    w[:, :2] = 1.0               # two equal largest weights in every row: the rule binds
    q_safe, _ = quantize_weights(w, pair_safe=True)
    q_plain, _ = quantize_weights(w, pair_safe=False)
    assert (pair_sum(q_safe) <= PAIR_LIMIT).all() and (pair_sum(q_plain) > PAIR_LIMIT).all()


def test_adjacent_pair_rule_flags_one_overflowing_neighbour_pair():
    """Pointwise weights: only input channels (2i, 2i+1) share an int16 (quantize.py), so
    large weights may sit apart, but one neighbour pair past 128 is flagged."""
    q = np.zeros((3, 8), np.int8)
    q[0, [0, 2, 4, 7]] = [127, 127, -128, -128]   # apart: 127 per pair, though any two add to 254
    q[1, 2:4] = [100, 28]
    q[2, 4:6] = [-100, -29]      # 129: one neighbour pair too many
    assert list(pair_sum(q, adjacent=True)) == [128, 128, 129]
    assert (pair_sum(q, adjacent=True) > PAIR_LIMIT).tolist() == [False, False, True]
    assert (pair_sum(q) > PAIR_LIMIT).tolist() == [True, False, True]     # any pair: row 0 breaks
    q_odd = np.zeros((1, 5), np.int8)
    q_odd[0, 4] = 127            # a last channel without a partner
    assert list(pair_sum(q_odd, adjacent=True)) == [127]
    w = np.clip(np.random.default_rng(1).normal(size=(64, 32)), -1, 1)
    w[:, :2] = 3.0               # a large neighbour pair in every row: the rule binds
    q_safe, s_safe = quantize_weights(w, pair_safe=True, adjacent=True)
    _, s_any = quantize_weights(w, pair_safe=True)
    q_plain, _ = quantize_weights(w, pair_safe=False)
    assert (pair_sum(q_safe, True) <= PAIR_LIMIT).all() and (pair_sum(q_plain, True) > PAIR_LIMIT).all()
    assert (s_safe <= s_any).all()
    w[:, 1] = 0.0                # the largest weights now apart: the neighbour rule costs nothing
    _, s_apart = quantize_weights(w, pair_safe=True, adjacent=True)
    assert np.allclose(s_apart, quantize_weights(w)[1]) and (s_apart < s_any).all()


def test_learned_rounding_lowers_the_output_error():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(48, 96))
    h = correlated_inputs(96)
    q_near, scales = quantize_weights(w)
    q_learned = round_layer(w, scales, h, depthwise=False, pair_limit=None)
    assert np.abs(q_learned.astype(int) - q_near).max() >= 1            # it changed something
    assert output_error(w, q_learned, scales, h) < 0.5 * output_error(w, q_near, scales, h)
    # uncorrelated inputs give nothing to compensate with: nearest is the answer
    assert np.array_equal(round_layer(w, scales, np.eye(96), False, None), q_near)
    # depthwise: one small problem per channel
    wd = rng.normal(size=(16, 1, 3, 3))
    hd = np.stack([correlated_inputs(9, seed=s) for s in range(16)])
    qd_near, sd = quantize_weights(wd)
    qd = round_layer(wd, sd, hd, depthwise=True, pair_limit=None)
    errors = [(output_error(wd[c:c + 1], qd[c:c + 1], sd[c:c + 1], hd[c]),
               output_error(wd[c:c + 1], qd_near[c:c + 1], sd[c:c + 1], hd[c])) for c in range(16)]
    assert sum(e for e, _ in errors) < sum(n for _, n in errors)


def test_learned_rounding_keeps_the_pair_rule():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(64, 40))
    w[:, :2] = np.abs(w[:, :2]) + 2.0          # every row has two large positive weights
    h = correlated_inputs(40)
    _, scales = quantize_weights(w, pair_safe=True)
    free = round_layer(w, scales, h, False, None)
    bound = round_layer(w, scales, h, False, PAIR_LIMIT)
    assert (pair_sum(free) > PAIR_LIMIT).any()             # compensation alone would break it
    assert (pair_sum(bound) <= PAIR_LIMIT).all() and np.abs(bound.astype(int)).max() <= 127
    # neighbour pairs (pointwise weights): clamped by the partner only, on their own scales
    w[:, 2:4] = np.abs(w[:, 2:4]) + 2.0        # a second large pair, apart from the first
    _, scales = quantize_weights(w, pair_safe=True, adjacent=True)
    free = round_layer(w, scales, h, False, None)
    bound = round_layer(w, scales, h, False, PAIR_LIMIT, adjacent=True)
    assert (pair_sum(free, True) > PAIR_LIMIT).any()
    assert (pair_sum(bound, True) <= PAIR_LIMIT).all() and np.abs(bound.astype(int)).max() <= 127
    assert (pair_sum(bound) > PAIR_LIMIT).any()        # what the any-pair rule would forbid
    assert output_error(w, bound, scales, h) < output_error(w, quantize_weights(w, pair_safe=True,
                                                                              adjacent=True)[0], scales, h)


def test_second_moments_are_those_of_the_ops_input_patches():
    """Each op kind's E[x xᵀ] equals that of its input patches taken by unfold (the layout of
    the op's weights), on a small Lite0."""
    graph = with_pixel_input(build_graph(fold_batchnorm(load_model("lite0", random_init=True,
                                                                   input_size=64))))
    pixels = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x = pixels_to_input(pixels, graph)
    values = {}
    with torch.no_grad():
        run(graph, x, values.__setitem__)
    kinds = set()
    for op in graph.ops:
        if op.weight is None or op.kind == "fc":
            continue
        t = values[op.inputs[0]].double()
        kh, kw = op.weight.shape[2:]
        left, right, top, bottom = op.pads
        cols = F.unfold(F.pad(t, (left, right, top, bottom)), (kh, kw), stride=op.stride)
        if op.kind == "conv":
            p = cols.transpose(1, 2).reshape(-1, cols.shape[1])
            ref = p.T @ p
        else:
            p = cols.view(t.shape[0], t.shape[1], kh * kw, -1).permute(1, 0, 3, 2).reshape(t.shape[1], -1, kh * kw)
            ref = p.transpose(1, 2) @ p
        h, n = _input_moments(op, values[op.inputs[0]])
        assert n == p.shape[-2], op.output
        assert torch.allclose(h.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())), op.output
        kinds.add((op.kind, kh, op.stride))
    assert {("conv", 3, 2), ("conv", 1, 1), ("dwconv", 3, 1), ("dwconv", 3, 2), ("dwconv", 5, 2)} <= kinds
    moments = second_moments(graph, pixels, batch=1)
    assert moments["logits"].shape == (1280, 1280)
    pooled = values["pooled"].double()
    assert np.allclose(moments["logits"], (pooled.T @ pooled / 2).numpy(), rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_folder(tmp_path_factory.mktemp("photos"))


def test_one_learned_export_writes_both_formats(photos, tmp_path):
    """One calibration with learned rounding: the TFLite file holds its learned 8-bit
    integers, the ONNX file the learned pair-safe ones (every pair within the rule); both
    hold the very same depthwise integers, and the learned sets are not nearest's."""
    import onnx
    from onnx import numpy_helper
    exporter = Exporter("lite0", log=lambda m: None)
    qg = exporter.calibrate(photos, 4, rounding="learned")
    assert qg.calibration["rounding"] == "learned"
    ranges, info, means = exporter.ranges_used
    nearest = quantize_graph(with_pixel_input(exporter.graph), ranges, info, means)
    exporter.export(tmp_path / "m.tflite", "int8", "tflite")
    exporter.export(tmp_path / "m.onnx", "int8", "onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    from ai_edge_litert import schema_py_generated as tfl
    model = tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel((tmp_path / "m.tflite").read_bytes(), 0))
    tensors = {t.name.decode(): t for t in model.subgraphs[0].tensors}
    changed = total = 0
    for op in qg.graph.ops:
        if op.weight is None:
            continue
        onnx_q = inits[f"{op.output}/weight/q"]
        assert np.array_equal(onnx_q, qg.pair_safe[op.output].weight), op.output
        t = tensors[f"{op.output}/weights"]
        tfl_q = np.frombuffer(model.buffers[t.buffer].data.tobytes(), np.int8).reshape(t.shape)
        tfl_q = {"conv": lambda a: a.transpose(0, 3, 1, 2), "dwconv": lambda a: a.transpose(3, 0, 1, 2),
                 "fc": lambda a: a}[op.kind](tfl_q)
        assert np.array_equal(tfl_q, qg.weights[op.output].weight), op.output
        if op.kind == "dwconv":
            assert np.array_equal(onnx_q, tfl_q), op.output
        else:
            assert (pair_sum(onnx_q, adjacent_pairs(op)) <= PAIR_LIMIT).all(), op.output
        changed += int((tfl_q != nearest.weights[op.output].weight).sum())
        total += tfl_q.size
    assert 0.001 < changed / total < 0.5, (changed, total)
    assert Classifier.from_file(tmp_path / "m.onnx").metadata.calibration["rounding"] == "learned"


def test_data_free_learned_rounding_reconstructs_on_synthetic_images():
    """Without photos, learned rounding reconstructs each layer on the blocky synthetic
    images (a small input keeps the test quick; the layers' sizes are Lite0's)."""
    exporter = Exporter("lite0", input_size=96, log=lambda m: None)
    qg = exporter.calibrate(None, rounding="learned")
    assert qg.calibration["rounding"] == "learned" and qg.calibration["images"] == 0
    ranges, info, means = exporter.ranges_used
    nearest = quantize_graph(with_pixel_input(exporter.graph), ranges, info, means)
    changed = sum(int((qg.weights[k].weight != nearest.weights[k].weight).sum()) for k in nearest.weights)
    assert changed > 1000, changed


def test_cli_rounding_learned(photos, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    assert main(["lite0", "--rounding", "learned", "--calib-dir", str(photos), "--calib-count", "4",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "calibrated lite0 (mse, 4 images, learned rounding)" in printed.err
    assert Classifier.from_file(out).metadata.calibration["rounding"] == "learned"
    with pytest.raises(SystemExit):
        main(["lite0", "--rounding", "sloppy"])
    assert "invalid choice: 'sloppy'" in capsys.readouterr().err
