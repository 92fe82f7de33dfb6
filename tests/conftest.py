"""Shared fixtures: the real dev photos (skipped with a reason when absent) and
scikit-image's bundled photos (always available), preprocessed by the runtime."""
from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

# Before anything loads OpenMP (PyTorch's): the suite runs a test on every core at once (xdist)
# and many tests start commands that use every core too, so threads that spin while they wait
# would take the cores from the threads doing the work. Measured on this 2-core machine: two
# 2-thread PyTorch training steps side by side took 11.6 s each spinning, 5.0 s passive (2.8 s
# alone). It changes how threads wait, not what they compute; commands inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from effnet_lite.preprocess import PreprocessConfig, normalize, preprocess  # noqa: E402
from effnet_lite.variants import get_variant  # noqa: E402
from tests_helpers import unavailable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true",
                     help="run the fuzz suite with 10x the cases (thousands; several minutes)")
    parser.addoption("--serve-long", action="store_true",
                     help="run effnet-serve's load test with 5x the requests (50,000; about 2 minutes here)")
    parser.addoption("--pi-guide", action="store_true",
                     help="run the Raspberry Pi guide's install commands verbatim on an emulated Pi 5, pip on the "
                          "board (about 2 minutes here; then cached by the wheel's content)")
    parser.addoption("--docs-bench", action="store_true",
                     help="also run the documents' effnet-bench lines as written (about 2 minutes here)")

DEV_DIR = ROOT.parent / "shared" / "data" / "imagenet-sample-dev"


def dev_rows() -> list[dict]:
    """(file, class_index) rows sorted by file name, or a skip when the folder is absent."""
    labels = DEV_DIR / "labels.csv"
    if not labels.is_file():
        unavailable(f"dev photos not found at {DEV_DIR} (CI has them beside the clone)")
    with open(labels, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["file"])
    return [{"path": DEV_DIR / r["file"], "label": int(r["class_index"])} for r in rows]


SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "colorwheel")


def superclass_rows() -> list[dict]:
    """The dev photos' rows of superclasses.csv (file, class_index, superclass), by file."""
    table = DEV_DIR / "superclasses.csv"
    if not table.is_file():
        unavailable(f"{table} not found (CI has the dev photos beside the clone)")
    with open(table, newline="") as f:
        return sorted(csv.DictReader(f), key=lambda r: r["file"])


def skimage_photos() -> dict[str, np.ndarray]:
    """Real photos that scikit-image installs: name → HxWx3 uint8."""
    from skimage import data
    return {name: getattr(data, name)() for name in SKIMAGE_PHOTOS[:3]}


def photo_folder(tmp_dir: Path) -> Path:
    """A folder of real photos on any machine: scikit-image's, saved as JPEG."""
    from PIL import Image
    from skimage import data
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE_PHOTOS:
        Image.fromarray(getattr(data, name)()).save(tmp_dir / f"{name}.jpg", quality=95)
    return tmp_dir


def calibration_folder(tmp_path_factory) -> tuple[Path, int]:
    """(folder, count): the dev photos' first 100 when present, else scikit-image's photos."""
    if (DEV_DIR / "labels.csv").is_file():
        return DEV_DIR, 100
    return photo_folder(tmp_path_factory.mktemp("photos")), len(SKIMAGE_PHOTOS)


def built_once(name: str, build) -> Path:
    """A folder `build(folder)` fills once per test run, whichever xdist worker asks first
    (the others wait on its lock and reuse it); never reused by another run. For what
    several modules need, which would otherwise be rebuilt on each worker."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"solo-{os.getppid()}-{os.getpid()}"
    root = Path(tempfile.gettempdir()) / "effnet-tests"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():          # earlier runs' folders (a day old): not kept forever
        if old.name != run and time.time() - old.stat().st_mtime > 86400:
            shutil.rmtree(old, ignore_errors=True)
    folder = root / run / name
    folder.parent.mkdir(exist_ok=True)
    with open(root / run / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "DONE").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / "DONE").write_text("")
    return folder


def calibrated_lite0(tmp_path_factory):
    """An Exporter of Lite0 calibrated on calibration_folder's photos. The calibration
    (ranges, channel means, the crops) runs once per session; each caller gets its own
    Exporter quantized from it, as `Exporter.calibrate` would have left it."""
    from effnet_lite.model_export.export import Exporter

    def build(out: Path) -> None:
        exporter = Exporter("lite0", log=lambda m: None)
        exporter.calibrate(*calibration_folder(tmp_path_factory))
        ranges, info, means = exporter.ranges_used
        np.savez(out / "arrays.npz", pixels=exporter.samples, **{f"mean:{k}": v for k, v in means.items()})
        (out / "ranges.json").write_text(json.dumps({"ranges": ranges, "info": info}))

    cached = built_once("lite0-calibration", build)
    doc = json.loads((cached / "ranges.json").read_text())
    with np.load(cached / "arrays.npz", allow_pickle=False) as arrays:
        means = {k[5:]: arrays[k] for k in arrays.files if k.startswith("mean:")}
        pixels = arrays["pixels"]
    exporter = Exporter("lite0", log=lambda m: None)
    exporter.samples = pixels
    exporter.use_ranges({k: tuple(v) for k, v in doc["ranges"].items()}, doc["info"], means)
    return exporter


def write_plain_int8_onnx(exporter, path: Path, io: str = "uint8") -> Path:
    """An int8 ONNX file with TFLite's plain 8-bit weights (not pair-safe, and its metadata
    says so): what saturates on x86 without VNNI, for tests that must see that."""
    from effnet_lite.model_export.onnx_writer import write_int8
    from effnet_lite import integrity
    meta = exporter.metadata("int8", "onnx", io)
    meta.digest, meta.pair_safe = integrity.PLACEHOLDER, False
    path.write_bytes(integrity.seal(write_int8(exporter.quantized, meta.to_json(), activations=io,
                                               pair_safe=False)))
    return path


def variant_config(name: str, size: int | None = None) -> PreprocessConfig:
    return PreprocessConfig.for_variant(get_variant(name), size)


def nchw_batch(sources, variant: str) -> np.ndarray:
    """The reference float input (N, 3, H, W) for PyTorch."""
    v, cfg = get_variant(variant), variant_config(variant)
    return np.stack([normalize(preprocess(s, cfg, exact=True), v.mean, v.std)
                     for s in sources]).transpose(0, 3, 1, 2)


@pytest.fixture(scope="session")
def dev():
    return dev_rows()


@pytest.fixture(scope="session")
def photos():
    return skimage_photos()


@pytest.fixture(scope="session")
def lite0_dev_report(tmp_path_factory):
    """The quantization report's figures for Lite0 on the dev photos (learned rounding beside
    nearest), with its int8 files (nearest rounding)."""
    from effnet_lite.model_export.report import report_variant
    from effnet_lite.dataset import labelled_images
    dev_rows()

    def build(keep: Path) -> None:
        row = report_variant("lite0", labelled_images(DEV_DIR), estimators=("mse",), with_ort=True,
                             keep_dir=keep, learned=True, data_free_learned=False)
        (keep / "row.json").write_text(json.dumps(row))
    keep = built_once("lite0-report", build)
    return json.loads((keep / "row.json").read_text()), keep


@pytest.fixture(scope="session")
def lite0_files(tmp_path_factory):
    """Lite0 files for runtime tests, calibrated on scikit-image's photos (any machine)."""
    from effnet_lite.model_export.export import Exporter
    folder = photo_folder(tmp_path_factory.mktemp("calib"))
    out = tmp_path_factory.mktemp("models")
    exporter = Exporter("lite0", log=lambda m: None)
    exporter.calibrate(folder, len(SKIMAGE_PHOTOS))
    files = {}
    for name, precision, fmt, io in [("int8.tflite", "int8", "tflite", "int8"),
                                     ("uint8.tflite", "int8", "tflite", "uint8"),
                                     ("fp32.tflite", "fp32", "tflite", None),
                                     ("int8.onnx", "int8", "onnx", "uint8"),
                                     ("fp32.onnx", "fp32", "onnx", None)]:
        exporter.export(out / name, precision, fmt, io, verify=False)
        files[name] = out / name
    files["photos"] = folder
    files["exporter"] = exporter
    return files


@pytest.fixture(scope="session")
def model(lite0_files):
    """The Lite0 int8 .tflite file (what the service tests serve)."""
    return lite0_files["int8.tflite"]


@pytest.fixture(scope="session")
def photo(lite0_files) -> bytes:
    """A real photo's JPEG bytes (scikit-image's cat)."""
    return (lite0_files["photos"] / "chelsea.jpg").read_bytes()
