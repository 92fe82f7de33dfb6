"""effnet-infer as a user meets it: output formats, exit codes, bad inputs, and the same
answers as the Python API and the export report on the dev photos."""
import json

import numpy as np
import pytest

from effnet_lite import Classifier, ClassifierOptions
from effnet_lite.apps.infer import main
from tests_helpers import run_module


def run_cli(*args):
    return run_module("effnet_lite.apps.infer", *args)


def test_table_output(lite0_files, capsys):
    assert main([str(lite0_files["photos"] / "coffee.jpg"), "--model",
                 str(lite0_files["int8.tflite"]), "--top-k", "3"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].startswith(str(lite0_files["photos"] / "coffee.jpg")) and "ms" in lines[0]
    assert "1." in lines[1] and "espresso  [967]" in lines[1] and len(lines) == 4
    assert "model:" in err and "lite0 int8" in err


def test_json_lines_directory_and_glob(lite0_files, capsys):
    photos = lite0_files["photos"]
    assert main([str(photos), str(photos / "c*.jpg"), "--model", str(lite0_files["int8.onnx"]),
                 "--json", "-k", "2", "--threshold", "0.0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    n = len(list(photos.glob("*.jpg"))) + len(list(photos.glob("c*.jpg")))
    assert len(rows) == n
    assert all(len(r["categories"]) == 2 and {"index", "label", "score"} <= set(r["categories"][0]) for r in rows)
    coffee = next(r for r in rows if r["source"].endswith("coffee.jpg"))
    assert coffee["categories"][0]["index"] == 967 and coffee["inference_ms"] > 0


def test_quiet(lite0_files, capsys):
    assert main([str(lite0_files["photos"] / "coffee.jpg"), "-m", str(lite0_files["fp32.tflite"]), "-q"]) == 0
    out, err = capsys.readouterr()
    path, label, score = out.strip().split("\t")
    assert label == "espresso" and 0 < float(score) <= 1 and "model:" not in err


def test_some_inputs_fail_others_still_classified(lite0_files, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes((lite0_files["photos"] / "rocket.jpg").read_bytes()[:2000])
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    good = lite0_files["photos"] / "coffee.jpg"
    code, out, err = run_cli(good, bad, zero, trunc, empty_dir, tmp_path / "missing.jpg",
                             "--model", lite0_files["int8.tflite"], "--json")
    assert code == 1
    assert [json.loads(line)["categories"][0]["index"] for line in out.splitlines()] == [967]
    errors = [line for line in err.splitlines() if line.startswith("effnet-infer:")]
    assert len(errors) == 5
    assert any("notes.jpg: not an image" in e for e in errors)
    assert any("zero.jpg: empty file" in e for e in errors)
    assert any("trunc.jpg: cannot decode image" in e for e in errors)
    assert any("empty: no images found" in e for e in errors)
    assert any("missing.jpg: no such file" in e for e in errors)
    assert "Traceback" not in err


def test_model_errors_exit_2_without_traceback(lite0_files, tmp_path):
    text = tmp_path / "model.tflite"
    text.write_text("hello")
    for model in (text, tmp_path / "absent.onnx"):
        code, out, err = run_cli(lite0_files["photos"] / "coffee.jpg", "--model", model)
        assert code == 2 and out == "" and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and err.startswith("effnet-infer: error:")


def test_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["x.jpg"])
    assert e.value.code == 2
    for bad, says in ((["-k", "0"], "--top-k"), (["--threads", "0"], "--threads"),
                      (["-t", "10"], "--threshold is a probability")):
        with pytest.raises(SystemExit) as e:
            main(["x.jpg", "-m", "m.tflite", *bad])
        assert e.value.code == 2 and says in capsys.readouterr().err.splitlines()[-1]
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert "effnet-infer 0." in capsys.readouterr().out


def test_cli_matches_api_and_report_on_dev_photos(lite0_dev_report):
    """effnet-infer on the evaluation half of the dev photos: with --exact, the same top-1
    as the API and exactly the accuracy the export report states for the same files; with
    the default fast preprocessing, the same top-1 on >= 98 % of them for TFLite (measured:
    199/200 of all dev photos) and >= 97 % for the ONNX file (measured 97/100: its pair-safe
    weights are coarser), and the same accuracy within two photos."""
    from conftest import DEV_DIR
    from effnet_lite.dataset import labelled_images
    row, folder = lite0_dev_report
    items = labelled_images(DEV_DIR)[100:]
    labels = np.array([label for _, label in items])

    def cli_top1(model, *flags):
        code, out, err = run_cli(*[p for p, _ in items], "--model", model, "--json", "-k", "1", *flags)
        assert code == 0, err
        return np.array([json.loads(line)["categories"][0]["index"] for line in out.splitlines()])

    for name, key in (("lite0_int8.tflite", "int8_mse"), ("lite0_int8.onnx", "int8_onnx")):
        model = folder / name
        exact = cli_top1(model, "--exact")
        clf = Classifier.from_file(model, ClassifierOptions(exact=True))
        api_top = np.array([clf.classify(p).categories[0].index for p, _ in items])
        assert np.array_equal(exact, api_top)
        assert np.mean(exact == labels) == pytest.approx(row[key]["top1"])
        fast = cli_top1(model)
        assert np.mean(fast == exact) >= (0.98 if name.endswith(".tflite") else 0.97)
        assert abs(np.mean(fast == labels) - np.mean(exact == labels)) <= 0.02


def test_backend_timing_and_verbose(lite0_files):
    """--backend picks the backend (and a wrong one for the file type is a one-line error),
    --timing says where the time went, -v describes the file as the runtime read it."""
    import re
    photo = lite0_files["photos"] / "coffee.jpg"
    code, out, err = run_cli(photo, "--model", lite0_files["int8.onnx"], "--backend", "onnxruntime-reference",
                             "--json", "-v", "--timing")
    assert code == 0, err
    assert json.loads(out)["categories"][0]["label"] == "espresso"
    assert "; onnxruntime-reference, 224px bicubic)" in err.splitlines()[0], err
    clf = Classifier.from_file(lite0_files["int8.onnx"])
    assert f"  integrity: digest {clf.backend.digest} verified" in err
    assert "  input: NCHW uint8 224x224, crop 0.875, bicubic, mean (0.502, 0.502, 0.502), std (0.5, 0.5, 0.5)" in err
    assert "  output: 1000 classes, logits (softmax applied here)" in err
    assert f"  cpu: int8 class {clf.cpu_int8_class}; file: pair-safe int8 weights" in err
    assert re.search(r"^timing: imports \d+ ms, model load \(incl\. backend import\) \d+ ms, 1 image\(s\): "
                     r"preprocess \d+\.\d ms, inference \d+\.\d ms per image$", err, re.M), err
    code, out, err = run_cli(photo, "--model", lite0_files["int8.tflite"], "--backend", "onnxruntime")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "onnxruntime" in err and "int8.tflite" in err
    # a file of someone else's (no metadata, no digest): -v says the digest was not checked
    from effnet_lite.model_export import tflite_writer
    foreign = lite0_files["photos"].parent / "foreign_for_v.tflite"
    foreign.write_bytes(tflite_writer.write_int8(lite0_files["exporter"].quantized, {}, "", "uint8"))
    code, out, err = run_cli(photo, "--model", foreign, "-v")
    assert code == 0 and "integrity: not checked (the file carries no digest" in err, err


def test_closed_pipe_exits_141_quietly(lite0_files):
    """`effnet-infer ... | head` once head has gone: exit 141 (as a shell reports SIGPIPE),
    nothing on stderr but the banner."""
    import os
    import subprocess
    import sys
    read_end, write_end = os.pipe()
    os.close(read_end)              # the reader is gone before the first line
    proc = subprocess.run([sys.executable, "-m", "effnet_lite.apps.infer", str(lite0_files["photos"]),
                           "--model", str(lite0_files["int8.tflite"])], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr, proc.stderr


def test_model_error_inside_the_workers(lite0_files, tmp_path):
    """The file is replaced by another (valid) one after effnet-infer checked it and before
    its workers open it: they refuse it (the digest differs), and the run ends with one line,
    exit 2, instead of workers restarting forever or answers from another model."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    from tests_helpers import readline_within
    model = tmp_path / "model.tflite"
    shutil.copy(lite0_files["int8.tflite"], model)
    photos = [str(p) for p in sorted(lite0_files["photos"].iterdir())] * 2
    proc = subprocess.Popen([sys.executable, "-m", "effnet_lite.apps.infer", *photos, "--model", str(model),
                             "--workers", "2", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        banner = readline_within(proc.stderr, 120, "effnet-infer's model banner")
        os.killpg(proc.pid, signal.SIGSTOP)     # before any worker can open the file
        assert banner.startswith("model: "), banner
        replacement = tmp_path / "other.tflite"
        shutil.copy(lite0_files["uint8.tflite"], replacement)
        os.replace(replacement, model)
        os.killpg(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2 and not out, (out, err)
    assert err.strip().splitlines() == [f"effnet-infer: error: {model}: the file changed on disk after it "
                                        "was checked (it is not the model this job started with)"], err
