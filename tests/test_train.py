"""effnet-train as a user meets it, on real photos: the dev set's animal groups (superclasses.csv).

One seeded default run (exported in every format) is judged independently: effnet-infer on
the validation photos must count what the report claims, MediaPipe must name the classes.
A second, small 2-class run feeds effnet-serve (no top_k), effnet-label and --init with a new
class. A killed run resumed must end exactly as the uninterrupted one; Ctrl-C keeps the best
model; each kind of bad input is one line. The two runs are made once per test run and
shared by the xdist workers (`conftest.built_once`).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DEV_DIR, built_once
from tests_helpers import require_module, run_module, unavailable, wait_for

ANIMALS = ("bird", "dog", "invertebrate", "other_mammal", "reptile_amphibian")
TRAIN = "effnet_lite.model_export.training.cli"


def superclass_rows() -> list[dict]:
    table = DEV_DIR / "superclasses.csv"
    if not table.is_file():
        unavailable(f"{table} not found (CI has the dev photos beside the clone)")
    with open(table, newline="") as f:
        return list(csv.DictReader(f))


def class_folders(root: Path, classes, per_class: int | None = None) -> Path:
    """The dev photos of `classes` as DATA/<class>/<photo> (symlinks)."""
    rows = [r for r in superclass_rows() if r["superclass"] in classes]
    root.mkdir(parents=True)
    taken: dict = {}
    for r in sorted(rows, key=lambda r: r["file"]):
        if per_class and taken.get(r["superclass"], 0) >= per_class:
            continue
        taken[r["superclass"]] = taken.get(r["superclass"], 0) + 1
        (root / r["superclass"]).mkdir(exist_ok=True)
        (root / r["superclass"] / r["file"]).symlink_to(DEV_DIR / r["file"])
    return root


def train(*args, timeout=900):
    return run_module(TRAIN, *args, timeout=timeout)


DEFAULT_ARGS = ("--seed", "3", "--export", "all")
TWO_ARGS = ("--views", "2", "--epochs", "80", "--val-split", "0.1")


def run_into(folder: Path, data: Path, *args) -> None:
    code, stdout, stderr = train(data, "--output", folder / "out", *args)
    (folder / "stdout.txt").write_text(stdout)
    (folder / "stderr.txt").write_text(stderr)
    assert code == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def animals() -> Path:
    return built_once("animals-data", lambda f: class_folders(f / "animals", ANIMALS)) / "animals"


@pytest.fixture(scope="module")
def trained(animals):
    """(output folder, report, stdout, stderr) of `effnet-train animals/ --export all`."""
    folder = built_once("animals-run", lambda f: run_into(f, animals, *DEFAULT_ARGS))
    out = folder / "out"
    return out, json.loads((out / "report.json").read_text()), (folder / "stdout.txt").read_text(), \
        (folder / "stderr.txt").read_text()


def two_class_data(folder: Path) -> None:
    data = class_folders(folder / "birds_dogs", ("bird", "dog"), per_class=10)
    (data / "empty").mkdir()
    (data / "bird" / "zz_cut.jpg").write_bytes((DEV_DIR / sorted(os.listdir(data / "bird"))[0]).read_bytes()[:900])
    (data / "dog" / "zz_notes.jpg").write_text("not a photo\n")
    run_into(folder, data, *TWO_ARGS)


@pytest.fixture(scope="module")
def two_class():
    """A small 2-class run (bird, dog) whose data also holds what users get wrong: an empty
    class folder, a truncated JPEG and a text file named .jpg; and a validation split so
    small that a class has one photo."""
    folder = built_once("two-class", two_class_data)
    return folder / "birds_dogs", folder / "out", (folder / "stdout.txt").read_text(), \
        (folder / "stderr.txt").read_text()


def val_rows(out: Path, which: str = "val") -> list[tuple[str, str]]:
    with open(out / "split.csv", newline="", encoding="utf-8") as f:
        return [(r["path"], r["label"]) for r in csv.DictReader(f) if r["set"] == which]


def test_report_figures_are_what_effnet_infer_counts(trained):
    """Each exported file's validation top-1, per-class recall and misclassified photos in
    report.json equal an independent count of effnet-infer's answers."""
    out, report, stdout, _ = trained
    rows = val_rows(out)
    assert report["classes"] == sorted(ANIMALS) and report["photos"]["val"] == len(rows) >= 15
    assert set(report["files"]) == {"tflite", "mediapipe", "onnx", "fp32"}
    for key, path in report["files"].items():
        code, answers, err = run_module("effnet_lite.apps.infer", *[p for p, _ in rows], "--model", path, "--json",
                                        "-k", "1")
        assert code == 0, err
        got = {json.loads(line)["source"]: json.loads(line)["categories"][0]["label"] for line in answers.splitlines()}
        right = sum(got[p] == label for p, label in rows)
        ev = report["evaluations"][key]
        assert ev["top1"] == pytest.approx(right / len(rows)), (key, ev["top1"], right)
        wrong = {w["photo"]: w["predicted"] for w in ev["misclassified"]}
        assert wrong == {p: got[p] for p, label in rows if got[p] != label}, key
        for c, row in enumerate(ev["per_class"]):
            mine = [got[p] == label for p, label in rows if label == row["class"]]
            assert row["photos"] == len(mine) and row["recall"] == pytest.approx(sum(mine) / len(mine))
            assert sum(ev["confusion"][c]) == len(mine)
    assert report["evaluations"]["tflite"]["top1"] >= 0.6        # five groups: chance is 0.2
    for name in ("confusion.png", "curves.png", "coverage.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(out / name) as im:
            assert min(im.size) > 200
    assert "validation top-1 (the first is what you deploy):" in stdout and "confusion matrix" in stdout
    assert "--threshold 0.5" in stdout and report["seconds"]["features"] > 0
    assert (out / "labels.txt").read_text().splitlines() == sorted(ANIMALS)


def test_checkpoint_is_timm_format_without_pickles(trained, tmp_path):
    from safetensors import safe_open
    from effnet_lite.model_export.training.checkpoint import load_checkpoint
    out, report, _, _ = trained
    sd, labels, variant = load_checkpoint(out / "model.safetensors")
    assert labels == sorted(ANIMALS) and variant == "lite0"
    assert sd["classifier.weight"].shape == (5, 1280) and "conv_stem.weight" in sd and "blocks.6.0.conv_pw.weight" in sd
    with safe_open(str(out / "model.safetensors"), "pt") as f:       # plain tensors, nothing to unpickle
        assert json.loads(f.metadata()["labels"]) == labels
    code, _, err = run_module("effnet_lite.model_export.cli", "lite0", "--weights", out / "model.safetensors",
                              "--labels", out / "labels.txt", "--precision", "fp32", "-o", tmp_path / "again.tflite")
    assert code == 0, err         # what effnet-export takes from anyone


def test_mediapipe_names_the_classes(trained):
    require_module("mediapipe.tasks.python.vision", "MediaPipe (test extra)")
    from mediapipe_helpers import MediaPipeClassifier, rgb
    from effnet_lite import Classifier
    from effnet_lite.preprocess import preprocess
    out, report, _, _ = trained
    path = report["files"]["mediapipe"]
    theirs, ours = MediaPipeClassifier(path), Classifier.from_file(path)
    try:
        for photo, _ in val_rows(out)[:8]:
            cats = theirs.classify(rgb(photo), 0.875)       # MediaPipe's own preprocessing
            assert sorted(c.category_name for c in cats) == sorted(ANIMALS)
            crop = preprocess(photo, ours.io.config)        # our crop: then the same probabilities
            cats = theirs.classify(crop)
            mine = ours.io.to_scores(ours.backend.run(ours.io.to_input(crop)))
            assert [(c.category_name, c.score) for c in cats] == \
                [(ours.labels[i], pytest.approx(mine[i], abs=1e-6)) for i in np.argsort(-mine, kind="stable")]
    finally:
        theirs.close()


def test_killed_run_resumes_to_the_same_result(two_class, tmp_path):
    """SIGKILL while the features are computed, then --resume: the cached part is reused as
    it is, and the result equals the uninterrupted run's (same seed): checkpoint and figures."""
    from safetensors.torch import load_file
    data, done, _, _ = two_class
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", TRAIN, str(data), "--output", str(out), *TWO_ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: any((out / ".effnet-train").glob("train-*.npz")) or proc.poll() is not None, 300,
                 "a cached feature chunk")
        os.killpg(proc.pid, signal.SIGSTOP)     # frozen at once, then a crash: no clean-up
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "report.json").exists() and not (out / "model.safetensors").exists()
    cached = {p.name: p.stat().st_mtime_ns for p in (out / ".effnet-train").glob("train-*.npz")}
    code, _, err = train(data, "--output", out, *TWO_ARGS)
    assert code == 2 and "holds a training run already: --resume continues it" in err
    code, _, err = train(data, "--output", out, *TWO_ARGS, "--resume")
    assert code == 0, err[-2000:]
    assert all((out / ".effnet-train" / n).stat().st_mtime_ns == t for n, t in cached.items())   # reused
    mine, theirs = load_file(str(out / "model.safetensors")), load_file(str(done / "model.safetensors"))
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in theirs)
    report, before = (json.loads((d / "report.json").read_text()) for d in (out, done))
    assert report["evaluations"] == before["evaluations"] and report["history"] == before["history"]


def test_ctrl_c_keeps_the_best_model_and_resume_finishes(two_class, tmp_path):
    """Ctrl-C during --fine-tune: exit 130, the best model so far saved; --resume then
    finishes the run."""
    from effnet_lite.model_export.training.checkpoint import load_checkpoint
    data = two_class[0]
    out = tmp_path / "ft"
    args = [str(data), "--output", str(out), *TWO_ARGS, "--fine-tune"]
    proc = subprocess.Popen([sys.executable, "-m", TRAIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    state = out / ".effnet-train" / "state.json"

    def fine_tuning() -> bool:
        try:
            return json.loads(state.read_text()).get("phase") == "fine-tune" or proc.poll() is not None
        except (OSError, ValueError):
            return proc.poll() is not None
    try:
        wait_for(fine_tuning, 300, "the first fine-tuning epoch")
        os.kill(proc.pid, signal.SIGSTOP)       # held where it is: the Ctrl-C lands while fine-tuning
        assert proc.poll() is None, "the run ended before Ctrl-C"
        proc.send_signal(signal.SIGINT)
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 2 and "the best model so far" in lines[0] and "--resume" in lines[1], err
    sd, labels, _ = load_checkpoint(out / "model.safetensors")
    assert labels == ["bird", "dog"] and sd["classifier.weight"].shape == (2, 1280)
    assert not (out / "report.json").exists()
    code, _, err = train(*args, "--resume")
    assert code == 0, err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert "fine-tune" in report["history"]["phase"]


def test_bad_data_is_named_and_skipped(two_class):
    """The empty class folder is left out with a warning, the unreadable files are skipped
    and named, the one-photo validation class is warned about; the run still finishes."""
    data, out, _, err = two_class
    assert f"warning: {data / 'empty'}: no images: class 'empty' is left out" in err
    assert "zz_cut.jpg" in err and "zz_notes.jpg" in err
    assert len(re.findall(r"warning: \d (train|val) file\(s\) could not be read and are left out", err)) in (1, 2), err
    assert "fewer than 2 validation photos ('bird': 1" in err, err
    assert (out / "labels.txt").read_text().splitlines() == ["bird", "dog"]
    assert "Traceback" not in err


def test_two_class_model_everywhere(two_class, tmp_path):
    """A 2-class model: effnet-serve answers without top_k (2 categories, not a 400), an
    explicit top_k above 2 is still refused; effnet-label and effnet-infer take it."""
    require_module("uvicorn", "effnet-serve needs uvicorn (serve extra)")
    from serve_helpers import Server
    data, out, _, _ = two_class
    model = out / "lite0_int8.tflite"
    photo = next(p for p, label in val_rows(out) if label == "dog")
    jpeg = Path(photo).read_bytes()
    with Server(model, "--workers", "1") as s:
        status, _, body = s.classify(jpeg)
        assert status == 200 and [c["label"] for c in body["categories"]] in (["dog", "bird"], ["bird", "dog"]), body
        status, _, body = s.classify(jpeg, "?top_k=3")
        assert status == 400 and "top_k must be a whole number from 1 to 2" in body["error"]
        assert s.request("GET", "/v1/model")[2]["labels"] == 2
    code, outp, err = run_module("effnet_lite.apps.infer", photo, "--model", model, "--json")
    assert code == 0 and len(json.loads(outp)["categories"]) == 2, err
    code, _, err = run_module("effnet_lite.apps.label", data / "dog", "--model", model, "--output", tmp_path / "lab")
    assert code == 1 and "errors 1" in err, err        # zz_notes.jpg is recorded, not fatal
    rows = [json.loads(line) for p in sorted((tmp_path / "lab").glob("part-*.jsonl")) for line in p.read_text().splitlines()]
    assert len(rows) == 11 and all(len(r["labels"]) == 2 for r in rows if r["error"] is None)


def test_init_adds_a_class_and_keeps_the_old_ones(two_class, tmp_path):
    """--init from the 2-class model with a third class: the known classes start from their
    trained rows (after one step the old and new models agree on bird/dog photos), and the
    new model names three classes."""
    from effnet_lite import Classifier
    data, old_out, _, _ = two_class
    more = class_folders(tmp_path / "more", ("bird", "dog", "reptile_amphibian"), per_class=10)
    out = tmp_path / "three"
    code, _, err = train(more, "--output", out, "--init", old_out / "model.safetensors", "--views", "2",
                         "--epochs", "1", "--val-split", "0.1")
    assert code == 0, err[-2000:]
    old, new = Classifier.from_file(old_out / "lite0_int8.tflite"), Classifier.from_file(out / "lite0_int8.tflite")
    assert new.labels == ["bird", "dog", "reptile_amphibian"]
    photos = [str(p) for c in ("bird", "dog") for p in sorted((data / c).glob("n*.JPEG"))]
    same = [old.classify(p).categories[0].label == new.classify(p).categories[0].label for p in photos]
    assert np.mean(same) >= 0.9, same


def test_bad_input_is_one_line_exit_2(two_class, tmp_path, capsys):
    from effnet_lite.model_export.training.cli import main
    data, out, _, _ = two_class
    single = tmp_path / "single"
    (single / "cat").mkdir(parents=True)
    for p in sorted((data / "bird").glob("n*.JPEG"))[:3]:
        (single / "cat" / p.name).symlink_to(p.resolve())
    odd = tmp_path / "odd"
    shutil.copytree(single, odd / "a\nb", symlinks=True)
    shutil.copytree(single, odd / "c", symlinks=True)
    both = tmp_path / "both_val"
    shutil.copytree(data, both, symlinks=True)
    foreign = tmp_path / "foreign_out"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    cases = [
        ((single, "--output", tmp_path / "o1"), "a classifier needs at least 2 classes with photos; found only 'cat'"),
        ((odd, "--output", tmp_path / "o2"), "holds a newline or another control character: rename it"),
        ((data, "--val", both, "--output", tmp_path / "o3"), "are in both the training and the validation data"),
        ((data, "--output", foreign), "is not empty and holds no effnet-train run"),
        ((data, "--output", out, "--views", "3", "--epochs", "80", "--val-split", "0.1", "--resume"),
         "holds a different run (views: 2, now 3)"),
        ((data, "--output", tmp_path / "o4", "--resume"), "no run to resume there"),
        ((data, "--output", tmp_path / "o5", "--variant", "lite9"), "lite9"),
        ((tmp_path / "nothing", "--output", tmp_path / "o6"), "not a folder of class sub-folders or a .csv file"),
    ]
    for args, says in cases:
        code = main([str(a) for a in args])
        out_text, err = capsys.readouterr()
        *before, last = err.splitlines() or [""]
        assert code == 2 and last.startswith("effnet-train: error: ") and says in last, (args, err)
        assert all(line.startswith("effnet-train: warning: ") for line in before), err      # (the empty folder)
        assert not out_text
    for made in ("o1", "o2", "o3", "o4", "o5", "o6"):
        assert not (tmp_path / made).exists()           # refused before anything was written
    assert (foreign / "notes.txt").read_text() == "mine\n"
    code, _, err = train(data, "--output", tmp_path / "o7", "--views", "0")
    assert code == 2 and "--views must be between 1 and 64" in err


def test_balanced_class_weights_lift_the_rare_class(tmp_path):
    """--class-weights balanced on imbalanced data (95 photos against 5, overlapping): the
    rare class's recall rises; the weights are scikit-learn's n / (classes x count)."""
    import torch
    from effnet_lite.model_export.training.fit import Settings, balanced_weights, fit_head
    assert balanced_weights([95, 5]) == pytest.approx([100 / 190, 100 / 10])
    rng = np.random.default_rng(0)

    def blobs(n0, n1):
        x = np.concatenate([rng.normal(0.0, 1.0, (n0, 8)), rng.normal(0.4, 1.0, (n1, 8))]).astype(np.float32)
        return x, np.asarray([0] * n0 + [1] * n1)
    x, y = blobs(95, 5)
    xv, yv = blobs(200, 200)
    recall = {}
    for weights in (None, balanced_weights([95, 5])):
        head = torch.nn.Linear(8, 2)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        (tmp_path / str(weights is None)).mkdir()
        fit_head(head, x, y, xv, yv, Settings(epochs=200, patience=1000, class_weights=weights),
                 tmp_path / str(weights is None), False)
        with torch.no_grad():
            pred = head(torch.from_numpy(xv)).argmax(1).numpy()
        recall[weights is None] = float((pred[yv == 1] == 1).mean())
    assert recall[False] > recall[True] + 0.3, recall
