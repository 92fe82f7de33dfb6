"""Our .tflite files in tflite-runtime 2.14 (numpy<2), the Raspberry Pi runtime, in a
separate virtual environment that holds only what `runtime` needs: the runtime package
must work there, with no torch, onnx or LiteRT."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests_helpers import cached_venv

from conftest import ROOT, photo_folder
from effnet_lite import Classifier
from effnet_lite.model_export.export import Exporter

SCRIPT = """
import json, sys
import numpy
from effnet_lite import Classifier, ClassifierOptions
out = {"numpy": numpy.__version__, "results": {}}
for model in sys.argv[2:]:
    clf = Classifier.from_file(model, ClassifierOptions(backend="tflite-runtime", max_results=1))
    out["results"][model] = [clf.classify(p).categories[0].index for p in sys.argv[1].split(",")]
mods = [m for m in ("torch", "onnx", "onnxruntime", "ai_edge_litert") if m in sys.modules]
out["heavy_modules"] = mods
print(json.dumps(out))
"""


def tflite_runtime_python() -> Path:
    """A cached venv with tflite-runtime, numpy<2 and Pillow (skip if it cannot be built)."""
    return cached_venv("effnet-tflite-runtime-py311", ["tflite-runtime>=2.14", "numpy<2", "pillow"], "tflite-runtime")


def test_files_run_in_tflite_runtime_with_numpy1(tmp_path):
    if sys.version_info >= (3, 12):
        pytest.skip("tflite-runtime has no wheels for Python >= 3.12")
    python = tflite_runtime_python()
    photos = photo_folder(tmp_path / "photos")
    images = sorted(str(p) for p in photos.iterdir())
    exporter = Exporter("lite0", log=lambda m: None)
    exporter.calibrate(photos, 8)
    models = []
    for name, precision, io in [("int8.tflite", "int8", "int8"), ("uint8.tflite", "int8", "uint8"),
                                ("fp32.tflite", "fp32", None)]:
        exporter.export(tmp_path / name, precision, "tflite", io)
        models.append(str(tmp_path / name))
    # the runtime folder alone, importable under its package name (none of the other folders)
    (tmp_path / "path").mkdir()
    (tmp_path / "path" / "effnet_lite").symlink_to(ROOT / "runtime", target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "path")}
    proc = subprocess.run([str(python), "-c", SCRIPT, ",".join(images), *models],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["numpy"].startswith("1.")
    assert report["heavy_modules"] == []
    for model in models:   # the same top-1 as LiteRT in this environment
        here = [Classifier.from_file(model).classify(p).categories[0].index for p in images]
        there = report["results"][model]
        assert np.mean(np.array(here) == np.array(there)) >= 0.75, (model, here, there)
        assert there[images.index(str(photos / "coffee.jpg"))] == 967
