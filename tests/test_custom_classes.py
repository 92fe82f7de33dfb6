"""Your own classes: a Lite0 fine-tune with a new 5-class head (fitted here on real photos),
exported by the command a user types, then classified by effnet-infer and by MediaPipe."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo_folder
from effnet_lite.preprocess import PreprocessConfig, normalize, preprocess
from effnet_lite.variants import get_variant
from tests_helpers import require_module, run_module

# scikit-image photo → a class name no ImageNet label has (so only the file can tell it)
CLASSES = {"chelsea": "Chelsea the cat", "coffee": "morning café", "astronaut": "Eileen Collins",
           "rocket": "launch day", "hubble_deep_field": "deep field"}


def augmented_crops(photo, rng, n: int) -> list:
    """n random crops (60-100 % of each side) and flips of a photo, as 224x224 model crops."""
    image = Image.open(photo).convert("RGB")
    w, h = image.size
    out = []
    for _ in range(n):
        cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = image.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(preprocess(crop, PreprocessConfig.for_variant(get_variant("lite0")), exact=True))
    return out


@pytest.fixture(scope="module")
def finetune(tmp_path_factory):
    """(checkpoint, labels file, photo folder): the pretrained backbone, a new head fitted
    with a few hundred steps on augmented crops of the five photos."""
    from effnet_lite.model_export.weights import load_model
    photos = photo_folder(tmp_path_factory.mktemp("photos"))
    model, rng = load_model("lite0"), np.random.default_rng(0)
    crops, targets = [], []
    for k, name in enumerate(CLASSES):
        batch = augmented_crops(photos / f"{name}.jpg", rng, 12)
        crops += batch
        targets += [k] * len(batch)
    with torch.no_grad():
        v = get_variant("lite0")
        x = torch.from_numpy(normalize(np.stack(crops), v.mean, v.std)).permute(0, 3, 1, 2)
        features = model.forward_features(x).mean((2, 3))
    head = torch.nn.Linear(features.shape[1], len(CLASSES))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    y = torch.tensor(targets)
    for _ in range(200):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(features), y)
        loss.backward()
        optimizer.step()
    assert (head(features).argmax(1) == y).all()
    state = model.state_dict()
    state["classifier.weight"], state["classifier.bias"] = head.weight.detach(), head.bias.detach()
    out = tmp_path_factory.mktemp("finetune")
    torch.save(state, out / "my_finetune.pth")
    (out / "labels.txt").write_text("\n".join(CLASSES.values()) + "\n", encoding="utf-8")
    return out / "my_finetune.pth", out / "labels.txt", photos


def export(finetune, out, *extra):
    ckpt, labels, photos = finetune
    return subprocess.run([sys.executable, "-m", "effnet_lite.model_export.cli", "lite0", "--weights", str(ckpt),
                           "--calib-dir", str(photos), "--calib-count", "8", "-o", str(out), *extra],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def exported(finetune, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    files = {"tflite": out / "mine.tflite", "onnx": out / "mine.onnx"}
    labels = str(finetune[1])
    for fmt, path in files.items():
        done = export(finetune, path, "--labels", labels, "--format", fmt, "--softmax",
                      *(["--io", "uint8"] if fmt == "tflite" else []))
        assert done.returncode == 0, done.stderr
    return files


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_effnet_infer_names_our_classes(finetune, exported, fmt):
    photos = finetune[2]
    code, out, err = run_module("effnet_lite.apps.infer", *[str(photos / f"{n}.jpg") for n in CLASSES],
                                "--model", str(exported[fmt]), "--json", "-k", "5")
    assert code == 0, err
    assert "5 classes" in err
    results = [json.loads(line) for line in out.splitlines()]
    for name, result in zip(CLASSES, results):
        assert result["source"].endswith(f"{name}.jpg")
        assert len(result["categories"]) == 5
        assert result["categories"][0]["label"] == CLASSES[name], result
        assert abs(sum(c["score"] for c in result["categories"]) - 1) < 0.02


def test_mediapipe_names_our_classes(finetune, exported):
    require_module("mediapipe.tasks.python.vision", "MediaPipe (test extra)")
    from mediapipe_helpers import MediaPipeClassifier, rgb
    clf = MediaPipeClassifier(exported["tflite"])
    try:
        for name, label in CLASSES.items():
            cats = clf.classify(rgb(finetune[2] / f"{name}.jpg"), get_variant("lite0").crop_pct)
            assert [c.category_name for c in cats][0] == label and len(cats) == 5
    finally:
        clf.close()


def test_labels_must_match_the_checkpoint(finetune, tmp_path):
    done = export(finetune, tmp_path / "x.tflite")
    assert done.returncode == 1 and "has 5 classes: give --labels FILE" in done.stderr
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n")
    done = export(finetune, tmp_path / "x.tflite", "--labels", str(tmp_path / "four.txt"))
    assert done.returncode == 1 and "names 4 classes but the checkpoint's classifier has 5" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x.tflite").exists()
