"""effnet-check on this machine: a reference written here compares equal here, and a
changed reference, a changed file or a tolerance too tight for the difference are caught."""
from __future__ import annotations

import json
import shutil

from effnet_lite.apps.check import main


def write_reference(lite0_files, tmp_path):
    ref = tmp_path / "ref"
    photos = sorted(lite0_files["photos"].iterdir())[:3]
    assert main(["write", str(ref), "-m", str(lite0_files["int8.tflite"]), "-m", str(lite0_files["int8.onnx"]),
                 *map(str, photos)]) == 0
    return ref, photos


def test_same_machine_is_bit_identical(lite0_files, tmp_path, capsys):
    ref, photos = write_reference(lite0_files, tmp_path)
    capsys.readouterr()
    out = tmp_path / "cmp.json"
    code = main(["compare", str(ref), "--models-dir", str(lite0_files["int8.tflite"].parent), "--images-dir",
                 str(lite0_files["photos"]), "--strict", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.count("PASS ") == 2 and "FAIL" not in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["file"] for r in rows] == ["int8.tflite", "int8.onnx"]
    for row in rows:
        assert row["images"] == row["raw_identical"] == row["raw_top1_same"] == 3 and row["max_difference"] == 0
        assert row["e2e_images"] == row["e2e_top1_same"] == row["crops_identical"] == 3
    assert rows[0]["difference_unit"] == "steps" and rows[1]["difference_unit"] == "relative"


def test_differences_fail_the_tolerance_asked_for(lite0_files, tmp_path, capsys):
    """Raw outputs moved by 3 steps in the reference: --strict and --max-steps 2 fail (exit 1),
    --max-steps 3 passes; a changed top-1 fails whatever the tolerance."""
    ref, _ = write_reference(lite0_files, tmp_path)
    doc = json.loads((ref / "reference.json").read_text())
    tflite = doc["models"][0]
    first = tflite["results"][0]["raw"]
    low = min(range(len(first)), key=lambda i: first[i])       # a class far from the top
    first[low] += 3
    (ref / "reference.json").write_text(json.dumps(doc))
    models = str(lite0_files["int8.tflite"].parent)
    for extra, code in ((["--strict"], 1), (["--max-steps", "2"], 1), (["--max-steps", "3"], 0), ([], 0)):
        capsys.readouterr()
        assert main(["compare", str(ref), "--models-dir", models, *extra]) == code, extra
        printed = capsys.readouterr().out
        line = next(x for x in printed.splitlines() if "int8.tflite" in x)
        assert line.startswith("FAIL " if code else "PASS "), (extra, line)
        assert "raw outputs bit-identical 2/3, max difference 3 steps" in line, line
    tflite["results"][1]["top5"][0] = (tflite["results"][1]["top5"][0] + 1) % 1000
    (ref / "reference.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["compare", str(ref), "--models-dir", models, "--max-steps", "1000"]) == 1
    assert "top-1 same 2/3" in capsys.readouterr().out


def test_another_file_under_the_same_name_is_refused(lite0_files, tmp_path, capsys):
    ref, _ = write_reference(lite0_files, tmp_path)
    elsewhere = tmp_path / "models"
    elsewhere.mkdir()
    shutil.copy(lite0_files["uint8.tflite"], elsewhere / "int8.tflite")     # valid, but not the same file
    shutil.copy(lite0_files["int8.onnx"], elsewhere / "int8.onnx")
    capsys.readouterr()
    assert main(["compare", str(ref), "--models-dir", str(elsewhere)]) == 2
    err = capsys.readouterr().err
    assert err == (f"effnet-check: error: {elsewhere / 'int8.tflite'}: not the file the reference was "
                   "written with (digest differs)\n"), err
    (ref / "reference.json").write_text('{"format": "something else"}')
    assert main(["compare", str(ref), "--models-dir", str(elsewhere)]) == 2
    assert "reference.json: not an effnet-check reference" in capsys.readouterr().err
