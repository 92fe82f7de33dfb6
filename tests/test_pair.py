"""Two networks in one file (model.Pair, what effnet-train --ensemble deploys): the graph runs
both from the one input and averages their logits, in every format, calibrated or data-free."""
import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import calibration_folder
from effnet_lite.model_export.calibration import pixels_to_input
from effnet_lite.model_export.cli import main
from effnet_lite.model_export.export import Exporter
from effnet_lite.model_export.graph import OUTPUT
from effnet_lite.model_export.model import Pair
from effnet_lite.model_export.weights import WeightsError, load_model


def _two_networks():
    """ImageNet's Lite0, and another whose every logit is the first's for the class before
    (its classifier's rows rolled) and whose last stage is scaled: two networks that disagree."""
    a = load_model("lite0")
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.classifier.weight.copy_(a.classifier.weight.roll(1, 0))
        b.classifier.bias.copy_(a.classifier.bias.roll(1, 0))
        for p in b.blocks[6].parameters():
            p.mul_(0.9)
    return a, b


def _save(state: dict, path) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def test_pair_files_answer_as_the_pair_not_as_either_network(tmp_path_factory, tmp_path):
    a, b = _two_networks()
    pair = Pair(a, b).eval()
    checkpoint = _save(pair.state_dict(), tmp_path / "pair.safetensors")
    exporter = Exporter("lite0", weights=checkpoint, log=lambda m: None)
    assert isinstance(exporter.model, Pair)
    assert [op.kind for op in exporter.graph.ops].count("fc") == 2
    assert exporter.graph.ops[-1].kind == "add" and exporter.graph.ops[-1].output == OUTPUT
    folder, _ = calibration_folder(tmp_path_factory)
    exporter.calibrate(folder, 32, rounding="learned")        # (effnet-train's rounding)
    pixels = exporter.samples
    x = pixels_to_input(pixels, exporter.graph)
    with torch.no_grad():
        la, lb, ref = a(x).numpy(), b(x).numpy(), exporter.model(x).numpy()
    np.testing.assert_allclose(ref, (la + lb) / 2, atol=1e-4)
    assert np.mean(la.argmax(1) == ref.argmax(1)) < 0.9        # the networks disagree: the test can tell
    for precision, fmt in (("int8", "tflite"), ("int8", "onnx"), ("fp32", "tflite")):
        path = exporter.export(tmp_path / f"pair_{precision}.{fmt}", precision, fmt).path
        got = exporter.outputs(path, pixels)
        assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.9, (precision, fmt)
        off = np.abs(got - ref).mean()
        assert off < 0.5 * np.abs(got - la).mean() and off < 0.5 * np.abs(got - lb).mean(), (precision, fmt)
        if precision == "fp32":
            np.testing.assert_allclose(got, ref, atol=2e-3)


def test_pair_exports_data_free(tmp_path, capsys):
    """Without photos: ranges from both networks' BatchNorm statistics, the logits' sum included."""
    a, b = _two_networks()
    checkpoint = _save(Pair(a, b).state_dict(), tmp_path / "pair.safetensors")
    out = tmp_path / "pair_int8.tflite"
    assert main(["lite0", "--weights", checkpoint, "-o", str(out)]) == 0
    assert "data-free calibration" in capsys.readouterr().err
    exporter = Exporter("lite0", weights=checkpoint, log=lambda m: None)
    pixels = exporter.verification_pixels()[0]
    assert exporter.compare_logits(exporter.outputs(out, pixels))[1] > 0.9     # cosine to the pair's logits


def test_damaged_pair_checkpoints_are_one_line_errors(tmp_path, capsys):
    a, b = _two_networks()
    state = Pair(a, b).state_dict()
    one = _save({k: v for k, v in state.items() if k.startswith("members.0.")}, tmp_path / "one.safetensors")
    stray = _save({**state, "classifier.bias": a.classifier.bias.clone()}, tmp_path / "stray.safetensors")
    small = copy.deepcopy(b)
    small.classifier = torch.nn.Linear(1280, 5)
    odd = _save({**{f"members.0.{k}": v for k, v in a.state_dict().items()},
                 **{f"members.1.{k}": v for k, v in small.state_dict().items()}}, tmp_path / "odd.safetensors")
    cases = [(one, "a pair's checkpoint without its members.1 network"),
             (stray, "a pair's checkpoint holds members.0.* and members.1.* only, not classifier.bias"),
             (odd, "a pair's networks must share the variant, input size and classes")]
    for path, says in cases:
        with pytest.raises(WeightsError) as e:
            load_model("lite0", path)
        assert str(e.value) == f"{path}: {says}"
        assert main(["lite0", "--weights", path, "-o", str(tmp_path / "x.tflite")]) == 1     # (as any bad checkpoint)
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"effnet-export: error: {path}: {says}"], err
    assert not (tmp_path / "x.tflite").exists()
