"""The Python API: results, options, model adaptation, bad model files, threads, and a
runtime that works without torch, onnx or onnxruntime."""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import ROOT
from effnet_lite import (BackendUnavailableError, Classifier, ClassifierOptions, ImageError,
                     ModelError)
from effnet_lite.backends import open_model
from tests_helpers import BLOCKER

def test_runtime_works_without_torch_and_onnx(lite0_files):
    code = BLOCKER + f"""
import json, runtime
from effnet_lite import Classifier
clf = Classifier.from_file({str(lite0_files['int8.tflite'])!r})
res = clf.classify({str(lite0_files['photos'] / 'coffee.jpg')!r})
try:
    Classifier.from_file({str(lite0_files['int8.onnx'])!r})
    onnx = "loaded"
except Exception as e:
    onnx = f"{{type(e).__name__}}: {{e}}"
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {{"torch", "onnx", "onnxruntime", "scipy", "pandas"}})
print(json.dumps({{"top": res.categories[0].index, "onnx": onnx, "heavy": heavy}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["top"] == 967 and out["heavy"] == []
    assert out["onnx"].startswith("BackendUnavailableError") and "[onnx]" in out["onnx"]


@pytest.mark.parametrize("name", ["int8.tflite", "uint8.tflite", "fp32.tflite", "int8.onnx", "fp32.onnx"])
def test_every_file_classifies_real_photos(lite0_files, photos, name):
    with Classifier.from_file(lite0_files[name], ClassifierOptions(max_results=3)) as clf:
        coffee = clf.classify(photos["coffee"])
        cat = clf.classify(lite0_files["photos"] / "chelsea.jpg")
    assert coffee.categories[0].index == 967 and coffee.categories[0].label == "espresso"
    assert 281 <= cat.categories[0].index <= 285
    assert len(coffee.categories) == 3 and coffee.inference_ms > 0 and coffee.preprocess_ms > 0
    scores = [c.score for c in coffee.categories]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001


def test_integer_models_get_integer_input_without_float_math(lite0_files, monkeypatch):
    import effnet_lite.model_io as model_io
    calls = []
    monkeypatch.setattr(model_io, "normalize", lambda *a: calls.append(a) or 1 / 0)
    for name, dtype, offset in [("int8.tflite", np.int8, -128), ("uint8.tflite", np.uint8, 0),
                                ("int8.onnx", np.uint8, 0)]:
        clf = Classifier.from_file(lite0_files[name])
        assert clf.io.pixel_offset == offset
        x = clf.preprocess(lite0_files["photos"] / "rocket.jpg")
        assert x.dtype == dtype
    assert calls == []
    pixels = np.full((224, 224, 3), 200, np.uint8)
    assert Classifier.from_file(lite0_files["int8.tflite"]).io.to_input(pixels).max() == 72


def test_options_threshold_allow_deny(lite0_files, photos):
    path = lite0_files["int8.tflite"]
    top = Classifier.from_file(path, ClassifierOptions(max_results=10)).classify(photos["coffee"])
    labels = [c.label for c in top.categories]
    only = Classifier.from_file(path, ClassifierOptions(category_allowlist=[labels[3], 1])).classify(photos["coffee"])
    assert [c.label for c in only.categories] == [labels[3], "goldfish"] or \
        [c.label for c in only.categories] == ["goldfish", labels[3]]
    denied = Classifier.from_file(path, ClassifierOptions(category_denylist=["espresso"])).classify(photos["coffee"])
    assert "espresso" not in [c.label for c in denied.categories]
    # a threshold between the first and second scores keeps exactly the first
    s1, s2 = top.categories[0].score, top.categories[1].score
    high = Classifier.from_file(path, ClassifierOptions(score_threshold=(s1 + s2) / 2)).classify(photos["coffee"])
    assert [(c.label, c.score) for c in high.categories] == [(labels[0], s1)]
    above = Classifier.from_file(path, ClassifierOptions(score_threshold=min(1.0, s1 + 1e-3))).classify(photos["coffee"])
    assert above.categories == []
    with pytest.raises(ValueError, match="unknown category 'unicorn'"):
        Classifier.from_file(path, ClassifierOptions(category_allowlist=["unicorn"]))


def test_per_call_max_results_and_threshold(lite0_files, photos):
    """classify(max_results=, score_threshold=) answers as a Classifier made with those options."""
    path = lite0_files["int8.tflite"]
    with Classifier.from_file(path) as default, \
            Classifier.from_file(path, ClassifierOptions(max_results=2, score_threshold=0.01)) as narrow:
        for image in photos.values():
            assert default.classify(image, max_results=2, score_threshold=0.01).categories == \
                narrow.classify(image).categories
            assert len(default.classify(image).categories) == 5          # the options' again
            assert len(default.classify(image, max_results=-1).categories) == 1000


def test_classify_many_survives_bad_files(lite0_files, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    clf = Classifier.from_file(lite0_files["int8.tflite"])
    out = list(clf.classify_many([lite0_files["photos"] / "coffee.jpg", bad,
                                  lite0_files["photos"] / "rocket.jpg"]))
    assert isinstance(out[1], ImageError) and "bad.jpg" in str(out[1])
    assert out[0].categories[0].index == 967 and out[2].categories


def test_one_classifier_serves_many_threads(lite0_files):
    photos = sorted(lite0_files["photos"].iterdir())
    clf = Classifier.from_file(lite0_files["int8.tflite"], ClassifierOptions(num_threads=1))
    expected = [clf.classify(p).categories[0].index for p in photos]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                for j, p in enumerate(photos):
                    results.setdefault((i, j), set()).add(clf.classify(p).categories[0].index)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (i, j), tops in results.items():
        assert tops == {expected[j]}


def strip_metadata_tflite(lite0_files, tmp_path, io):
    """The model as files made elsewhere come: no metadata at all."""
    from effnet_lite.model_export import tflite_writer
    blob = tflite_writer.write_int8(lite0_files["exporter"].quantized, {}, "", io)
    path = tmp_path / f"plain_{io}.tflite"
    path.write_bytes(blob)
    return path


def test_models_without_metadata(lite0_files, photos, tmp_path):
    # a uint8-input file without our metadata (like Google's): pixels go in as they are
    clf = Classifier.from_file(strip_metadata_tflite(lite0_files, tmp_path, "uint8"))
    assert clf.metadata is None and clf.io.pixel_offset == 0
    assert clf.io.config.size == 224 and clf.io.config.interpolation == "bicubic"
    assert clf.classify(photos["coffee"]).categories[0].label == "espresso"


def test_nhwc_float_onnx_without_metadata(lite0_files, photos, tmp_path):
    import onnx
    from onnx import helper
    model = onnx.load(str(lite0_files["fp32.onnx"]))
    del model.metadata_props[:]
    old = model.graph.input[0]
    old.name = "nchw"
    for node in model.graph.node:
        node.input[:] = ["nchw" if i == "input" else i for i in node.input]
    model.graph.node.insert(0, helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]))
    model.graph.input.remove(old)
    model.graph.input.insert(0, helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 224, 224, 3]))
    path = tmp_path / "nhwc.onnx"
    onnx.save(model, str(path))
    clf = Classifier.from_file(path)
    assert clf.io.layout == "NHWC" and clf.metadata is None
    assert clf.classify(photos["coffee"]).categories[0].index == 967


def not_a_classifier(tmp_path):
    """A valid .tflite whose input is a vector, not an image."""
    from ai_edge_litert import schema_py_generated as tfl
    from effnet_lite.model_export.tflite_writer import _Builder
    b = _Builder()
    x = b.tensor("x", [1, 10], tfl.TensorType.FLOAT32)
    w = b.tensor("w", [5, 10], tfl.TensorType.FLOAT32, np.ones((5, 10), np.float32))
    bias = b.tensor("b", [5], tfl.TensorType.FLOAT32, np.zeros(5, np.float32))
    y = b.tensor("y", [1, 5], tfl.TensorType.FLOAT32)
    b.op(("fc", "fp32"), [x, w, bias], [y], tfl.BuiltinOptions.FullyConnectedOptions,
         tfl.FullyConnectedOptionsT())
    path = tmp_path / "vector.tflite"
    path.write_bytes(b.finish([x], [y], {}, ""))
    return path


def test_bad_model_files(lite0_files, tmp_path):
    text = tmp_path / "text.tflite"
    text.write_text("I am not a model\n" * 10)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(lite0_files["int8.tflite"].read_bytes()[:50_000])
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(lite0_files["int8.onnx"].read_bytes()[:30_000])
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    cases = [(text, "not a TFLite model \\(no TFL3 file identifier\\)"), (truncated, "corrupt or was modified|not a valid TFLite model|cannot load"),
             (bad_onnx, "cannot load ONNX model"), (empty, "empty"),
             (tmp_path / "missing.tflite", "no such model file"),
             (tmp_path / "model.pb", "unknown model type"),
             (not_a_classifier(tmp_path), "not an image classifier \\(input has rank 2")]
    for path, message in cases:
        with pytest.raises(ModelError, match=message) as e:
            Classifier.from_file(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_backend_choice(lite0_files):
    with pytest.raises(ModelError, match="cannot run .onnx files"):
        open_model(lite0_files["int8.onnx"], backend="litert")
    with pytest.raises(ModelError, match="unknown backend"):
        open_model(lite0_files["int8.onnx"], backend="coreml")
    assert open_model(lite0_files["int8.tflite"], backend="litert").name == "litert"
    if not any(p for p in sys.path if os.path.isdir(os.path.join(p, "tflite_runtime"))):
        with pytest.raises(BackendUnavailableError, match="tflite-legacy"):
            open_model(lite0_files["int8.tflite"], backend="tflite-runtime")


def test_closed_classifier_says_so(lite0_files, photos):
    with Classifier.from_file(lite0_files["int8.tflite"]) as clf:
        clf.classify(photos["coffee"])
    with pytest.raises(ModelError, match="this Classifier is closed"):
        clf.classify(photos["coffee"])


def test_preprocessing_overrides_follow_the_reference_transform(lite0_files):
    """crop_pct, interpolation, mean and std given in ClassifierOptions replace the file's
    own settings: the model input equals an independent reference transform (Pillow resize
    of the shorter side to size/crop_pct, centre crop, then (x/255 - mean)/std)."""
    from PIL import Image
    photo = lite0_files["photos"] / "chelsea.jpg"
    mean, std = (0.1, 0.2, 0.3), (0.9, 0.8, 0.7)
    for crop_pct, interpolation, resample in ((1.0, "bilinear", Image.BILINEAR), (0.75, "bicubic", Image.BICUBIC)):
        options = ClassifierOptions(exact=True, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std)
        clf = Classifier.from_file(lite0_files["fp32.tflite"], options)
        assert (clf.io.config.crop_pct, clf.io.config.interpolation) == (crop_pct, interpolation)
        with Image.open(photo) as im:
            im = im.convert("RGB")
            w, h = im.size
            short = int(224 / crop_pct)
            size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
            im = im.resize(size, resample)
            left, top = int(round((size[0] - 224) / 2.0)), int(round((size[1] - 224) / 2.0))
            crop = np.asarray(im.crop((left, top, left + 224, top + 224)), np.float32)
        expected = (crop / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        got = clf.preprocess(str(photo))
        assert got.shape == (1, 224, 224, 3)
        assert np.abs(got[0] - expected).max() < 1e-5
        default = Classifier.from_file(lite0_files["fp32.tflite"], ClassifierOptions(exact=True)).preprocess(str(photo))
        assert np.abs(default - got).max() > 0.1          # the overrides did change something
    with pytest.raises(ValueError, match="interpolation must be one of"):
        Classifier.from_file(lite0_files["fp32.tflite"], ClassifierOptions(interpolation="cubic-ish"))


def test_max_pixels_option_bounds_what_is_decoded(lite0_files):
    """A photo over ClassifierOptions.max_pixels is an ImageError from its header, before it
    is decoded; the same photo under the limit is classified."""
    from effnet_lite import ImageError
    photo = lite0_files["photos"] / "coffee.jpg"           # 600x400 = 0.24 megapixels
    small = Classifier.from_file(lite0_files["int8.tflite"], ClassifierOptions(max_pixels=200_000))
    with pytest.raises(ImageError, match=r"coffee.jpg: image is 600x400 \(0.24 megapixels\), over the "
                                         r"0.2-megapixel safety limit"):
        small.classify(str(photo))
    enough = Classifier.from_file(lite0_files["int8.tflite"], ClassifierOptions(max_pixels=240_000))
    assert enough.classify(str(photo)).categories[0].label == "espresso"
