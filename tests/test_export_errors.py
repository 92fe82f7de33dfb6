"""effnet-export's command line and its failures: one clear line, no partial file."""
import os
from dataclasses import replace

import pytest

from conftest import SKIMAGE_PHOTOS, photo_folder
from effnet_lite import Classifier
from effnet_lite.model_export.calibration import CalibrationError, load_calibration_images
from effnet_lite.model_export.cli import main
from effnet_lite.model_export.export import ExportError, Exporter
from tests_helpers import leftovers


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
    return photo_folder(tmp_path_factory.mktemp("photos"))


def test_cli_exports_a_working_int8_tflite(photos_dir, tmp_path, capsys):
    out = tmp_path / "lite0_int8.tflite"
    assert main(["lite0", "--calib-dir", str(photos_dir), "--calib-count", "4", "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "lite0_int8.tflite" in printed.out and "top-1 agree" in printed.out
    assert "calibrated lite0 (mse, 4 images, nearest rounding)" in printed.err
    clf = Classifier.from_file(out)
    assert clf.metadata.calibration["images"] == 4
    assert clf.classify(photos_dir / "coffee.jpg").categories[0].index == 967
    assert leftovers(tmp_path) == []


def test_cli_data_free_notice(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["lite0", "--format", "onnx", "-o", str(out)]) == 0
    assert "data-free calibration" in capsys.readouterr().err
    assert Classifier.from_file(out).metadata.calibration["method"].startswith("data-free")


@pytest.mark.parametrize("argv,message", [
    (["lite0", "--format", "pb"], "invalid choice: 'pb'"),
    (["lite0", "--precision", "fp16"], "invalid choice: 'fp16'"),
    ([], "give a VARIANT or --all"),
    (["lite0", "--input-size", "0"], "--input-size must be between 32 and 2048"),
    (["lite0", "--calib-count", "0"], "--calib-count must be at least 1"),
    (["lite0", "--crop-pct", "0.1"], "--crop-pct must be a number in [0.3, 1.0], not 0.1"),
])
def test_cli_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_writes_the_centre_crop_asked_for(tmp_path, photos_dir):
    """--crop-pct (a model trained for another crop) goes into the file, and the runtime cuts
    the photo so: its input is then the reference crop at that share, not the variant's."""
    from effnet_lite.preprocess import preprocess
    out = tmp_path / "whole.tflite"
    assert main(["lite0", "--precision", "fp32", "--crop-pct", "1", "-o", str(out)]) == 0
    photo = photos_dir / "coffee.jpg"
    with Classifier.from_file(out) as clf:
        assert clf.metadata.crop_pct == 1.0
        top = clf.classify(photo).categories[0]
        scores = {pct: clf.io.to_scores(clf.backend.run(clf.io.to_input(
            preprocess(photo, replace(clf.io.config, crop_pct=pct)))))[top.index] for pct in (1.0, 0.875)}
    assert top.score == pytest.approx(scores[1.0], abs=1e-6) and abs(top.score - scores[0.875]) > 1e-3, (top, scores)


def _trained_checkpoint(path, **meta):
    """A checkpoint as effnet-train writes it: 3 classes, their names and a crop in its metadata."""
    from effnet_lite.model_export.model import create_model
    from effnet_lite.model_export.training.checkpoint import save_checkpoint
    save_checkpoint(path, create_model("lite0", None, 3).state_dict(), ["ant", "bee", "wasp"], "lite0", meta)
    return path


def test_cli_takes_a_trained_checkpoints_classes_and_crop(tmp_path, capsys):
    """effnet-export --weights my_model/model.safetensors: the class names and the centre crop
    come from the checkpoint (what effnet-train chose), unless the command line gives them."""
    ckpt = _trained_checkpoint(tmp_path / "model.safetensors", crop_pct=1.0)
    base = ["lite0", "--weights", str(ckpt), "--precision", "fp32"]
    assert main(base + ["-o", str(tmp_path / "own.tflite")]) == 0
    with Classifier.from_file(tmp_path / "own.tflite") as clf:
        assert (clf.metadata.labels, clf.metadata.crop_pct) == (["ant", "bee", "wasp"], 1.0)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    assert main(base + ["--labels", str(names), "--crop-pct", "0.9", "-o", str(tmp_path / "given.tflite")]) == 0
    with Classifier.from_file(tmp_path / "given.tflite") as clf:
        assert (clf.metadata.labels, clf.metadata.crop_pct) == (["a", "b", "c"], 0.9)


@pytest.mark.parametrize("labels, crop, problem", [
    ('["ant", "bee", "wasp"]', "7", "crop_pct must be a number in [0.3, 1.0], not 7"),
    ('["ant", "bee", "wasp"]', '"whole"', 'crop_pct must be a number in [0.3, 1.0], not "whole"'),
    ('["ant", "bee", "wasp"]', "[1", "unreadable checkpoint metadata"),
    ('"ant"', "1.0", "its class names are not a list of names")])
def test_cli_rejects_a_checkpoints_bad_metadata_in_one_line(labels, crop, problem, tmp_path, capsys):
    ckpt = tmp_path / "model.safetensors"
    from effnet_lite.model_export.model import create_model
    from safetensors.torch import save_file
    save_file(create_model("lite0", None, 3).state_dict(), str(ckpt), metadata={"labels": labels, "crop_pct": crop})
    out = tmp_path / "m.tflite"
    assert main(["lite0", "--weights", str(ckpt), "--precision", "fp32", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"effnet-export: error: {ckpt}: ") and problem in err[0], err
    assert not out.exists()


def test_cli_unknown_variant(capsys):
    assert main(["lite7"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("effnet-export: error: unknown variant 'lite7': "
                           "choose one of lite0, lite1, lite2, lite3, lite4")


def test_output_path_that_is_a_folder(tmp_path, capsys):
    assert main(["lite0", "--precision", "fp32", "-o", str(tmp_path)]) == 1
    assert f"{tmp_path}: is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--variants", "lite9"], "--variants: unknown variant 'lite9'"),
    (["--variants", "lite0,lite4"], "--variants lite4: no pretrained weights are bundled"),
    (["--json", "{t}/absent/r.json"], "--json {t}/absent/r.json: output folder"),
])
def test_quant_report_rejects_bad_arguments_before_any_work(args, message, tmp_path, capsys):
    from effnet_lite.model_export.report import main as report_main
    with pytest.raises(SystemExit) as exit_info:
        report_main(["--data", str(tmp_path), *(a.format(t=tmp_path) for a in args)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("effnet-quant-report: error:") and message.format(t=tmp_path) in last
    assert "Traceback" not in err


def test_empty_and_imageless_calibration_folders(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["lite0", "--calib-dir", str(empty), "-o", str(tmp_path / "a.tflite")]) == 1
    assert "no images found" in capsys.readouterr().err
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "notes.txt").write_text("hello")
    (texts / "README.md").write_text("# hi")
    assert main(["lite0", "--calib-dir", str(texts), "-o", str(tmp_path / "b.tflite")]) == 1
    assert "no images found" in capsys.readouterr().err
    assert main(["lite0", "--calib-dir", str(tmp_path / "missing"), "-o", str(tmp_path / "c.tflite")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_unreadable_images_are_skipped_and_counted(photos_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_good.jpg").write_bytes((photos_dir / "coffee.jpg").read_bytes())
    (folder / "b_truncated.jpg").write_bytes((photos_dir / "chelsea.jpg").read_bytes()[:300])
    (folder / "c_fake.png").write_text("not a png")
    (folder / "sub").mkdir()
    (folder / "sub" / "d_good.jpg").write_bytes((photos_dir / "rocket.jpg").read_bytes())
    from conftest import variant_config
    warnings = []
    pixels = load_calibration_images(folder, 10, variant_config("lite0"), warn=warnings.append)
    assert pixels.shape == (2, 224, 224, 3)              # recursive: sub/ counted
    assert any("b_truncated.jpg" in w for w in warnings) and any("c_fake.png" in w for w in warnings)
    assert "skipped 2 unreadable file(s)" in warnings[-1]
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(CalibrationError, match="none of the 1 image files could be read"):
        load_calibration_images(only_bad, 10, variant_config("lite0"), warn=lambda m: None)


def test_unwritable_output_fails_before_any_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["lite0", "--precision", "fp32", "-o", str(locked / "m.tflite")])
        err = capsys.readouterr().err
        import os
        if os.access(locked, os.W_OK):     # root ignores permissions: use a missing folder instead
            code = main(["lite0", "--precision", "fp32", "-o", str(tmp_path / "nope" / "m.tflite")])
            err = capsys.readouterr().err
            assert "does not exist" in err
        else:
            assert "permission denied" in err
        assert code == 1
    finally:
        locked.chmod(0o700)
    assert leftovers(tmp_path) == []


def test_broken_writer_leaves_no_partial_file(tmp_path, monkeypatch):
    exporter = Exporter("lite0", log=lambda m: None)
    monkeypatch.setattr(exporter, "serialize", lambda *a, **k: b"TFL3 but not a model at all")
    with pytest.raises(ExportError, match="failed to load or run"):
        exporter.export(tmp_path / "broken.tflite", "fp32", "tflite")
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_and_precision(tmp_path):
    exporter = Exporter("lite0", log=lambda m: None)
    with pytest.raises(ExportError, match="unknown format 'pb'"):
        exporter.export(tmp_path / "m.pb", "fp32", "pb")
    with pytest.raises(ExportError, match="unknown precision"):
        exporter.serialize("fp16", "onnx")
    with pytest.raises(ExportError, match="uint8 or int8 input"):
        exporter.serialize("int8", "onnx", "float32")
    assert leftovers(tmp_path) == []


def test_all_skips_lite3_without_weights(tmp_path, photos_dir, capsys, monkeypatch):
    """--all builds Lite0-2 only; Lite3/4 are skipped with the reason (fast: 1 variant faked)."""
    import effnet_lite.model_export.cli as cli
    monkeypatch.setattr(cli, "VARIANTS", {k: cli.VARIANTS[k] for k in ("lite0", "lite3")})
    assert main(["--all", str(tmp_path / "out"), "--calib-dir", str(photos_dir),
                 "--calib-count", "2"]) == 0
    captured = capsys.readouterr()
    assert "skipping lite3: no bundled weights" in captured.err
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["lite0_fp32.onnx", "lite0_fp32.tflite", "lite0_int8.onnx", "lite0_int8.tflite"]
    assert captured.out.count("lite0_") == 4
    assert len(SKIMAGE_PHOTOS) >= 2


def test_untrained_large_variant_for_latency_work(tmp_path, capsys):
    from effnet_lite.apps.infer import main as infer
    out = tmp_path / "lite3_int8.tflite"
    assert main(["lite3", "--random-init", "-o", str(out)]) == 0
    assert "random weights (untrained)" in capsys.readouterr().err
    clf = Classifier.from_file(out)
    assert clf.metadata.untrained and clf.metadata.input_size == 300
    assert clf.metadata.interpolation == "bilinear" and clf.metadata.crop_pct == 0.904
    photo = tmp_path / "p.png"
    from PIL import Image
    Image.new("RGB", (400, 300), (120, 80, 40)).save(photo)
    assert infer([str(photo), "--model", str(out)]) == 0
    assert "UNTRAINED" in capsys.readouterr().err


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_exported_files_respect_the_umask(lite0_files, tmp_path, umask):
    """Written through a temporary file (mkstemp makes 0600), yet created like any file."""
    old = os.umask(umask)
    try:
        lite0_files["exporter"].export(tmp_path / "m.tflite", "fp32", "tflite", verify=False)
    finally:
        os.umask(old)
    assert (tmp_path / "m.tflite").stat().st_mode & 0o777 == 0o666 & ~umask
