"""The Raspberry Pi boards, emulated: our files, made here on x86, run by the runtime
installed from a wheel of this checkout into Debian arm64/armhf userlands under qemu-user,
compared with the x86 answers of the same run (benchmarks/arm_emulation.py); int8 ONNX files
with their QDQ reference semantics, which no x86 CPU class changes.

Needs root, qemu-user-static and debootstrap (`.ci/run` installs them) and the dev photos;
skips with the reason otherwise. Userlands are cached under the temp folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from effnet_lite.benchmarks.arm_emulation import RESOLUTIONS, TARGETS, missing_tools, run_targets, summary
from effnet_lite.benchmarks.arm_packages import DEFAULT_CACHE, build_wheel, resolve
from conftest import DEV_DIR, built_once
from tests_helpers import unavailable

PHOTOS = 20
OTHER_BOARDS_PHOTOS = 10      # the Pi 5 check runs all 20
FLOAT_PHOTOS = 5      # emulated float math is ~6x slower than int8 (fp32: summation order only)
CLI_PHOTOS = 5        # effnet-infer's own run (compare has run every photo end to end)
# Largest raw-output differences allowed; measured (README, Raspberry Pi guide), with some
# room: S8S8 ONNX runs onnxruntime's ARM int8 kernels, compared with the file's QDQ
# reference semantics (float logits: relative to max |logit|; their rounding differs from
# the reference's as x86's fused kernels' does); tflite-runtime 2.14 runs TFLite's own int8
# kernels, not XNNPACK, whose rounding differs (4 steps on armv7 - and 4 on x86 too, so it
# is the kernels, not ARM); fp32 XNNPACK on NEON sums in another order than on x86 (1.6e-6).
MAX_ONNX_RELATIVE = 0.05
MAX_ARMHF_STEPS = 8
MAX_FP32_RELATIVE = 1e-4


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "debootstrap needs root"
    missing = missing_tools(TARGETS.values())
    if missing:
        return f"missing {', '.join(missing)} (apt-get install qemu-user-static debootstrap)"
    if not (DEV_DIR / "labels.csv").is_file():
        return f"dev photos not found at {DEV_DIR}"
    return None


if _skip_reason() is not None:        # a skip here, a failure in CI (.ci/run installs the tools)
    unavailable(str(_skip_reason()), module_level=True)


@pytest.fixture(scope="module")
def arm_files(tmp_path_factory):
    """Lite0 int8 (int8 and uint8 I/O), fp32 and S8S8 ONNX, and Lite2 int8, calibrated on
    the 20 photos the check then uses."""
    from effnet_lite.model_export.export import Exporter

    def build(folder: Path) -> None:
        photos, files = folder / "photos", folder / "files"
        photos.mkdir(), files.mkdir()
        for path in sorted(DEV_DIR.glob("*.JPEG"))[:PHOTOS]:
            shutil.copy(path, photos / path.name)
        jobs = {"lite0": [("int8.tflite", "int8", "tflite", "int8"), ("uint8.tflite", "int8", "tflite", "uint8"),
                          ("fp32.tflite", "fp32", "tflite", None), ("s8s8.onnx", "int8", "onnx", "int8")],
                "lite2": [("int8.tflite", "int8", "tflite", "int8")]}
        for variant, outputs in jobs.items():
            exporter = Exporter(variant, log=lambda m: None)
            exporter.calibrate(photos, PHOTOS)
            for name, precision, fmt, io in outputs:
                exporter.export(files / f"{variant}_{name}", precision, fmt, io, verify=False)
    folder = built_once("arm-files", build)     # the tests spread over workers
    return folder / "files", folder / "photos"


def check(result: dict, max_steps: float = 0, count: int = PHOTOS) -> None:
    """What must hold on every board: same top-1 as x86 everywhere (raw on the x86 crops,
    and end to end), integer outputs within `max_steps`, effnet-infer's answers and exit codes."""
    for row in result["rows"]:
        name = row["file"]
        photos = FLOAT_PHOTOS if "fp32" in name else count
        assert row["raw_top1_same"] == row["images"] == photos, row
        assert row["e2e_images"] == photos and row["e2e_top1_same"] == photos, row
        if "fp32" in name:
            assert row["max_difference"] <= MAX_FP32_RELATIVE, row
        elif name.endswith(".onnx"):
            assert row["max_difference"] <= MAX_ONNX_RELATIVE, row
        else:
            assert row["max_difference"] <= max_steps, row
            if max_steps == 0:
                assert row["raw_identical"] == photos, row
    infer = result["infer"]         # a bad image, then CLI_PHOTOS photos
    assert "int8" in infer["model"], infer
    assert infer["exit"] == 1 and len(infer["top1"]) == CLI_PHOTOS and infer["top1"] == infer["x86_top1"], infer
    others = [line for line in infer["stderr_lines"] if not line.startswith("model: ")]
    assert len(others) == 1 and "not_a_photo.jpg" in others[0], infer
    codes = result["exit_codes"]
    assert codes["missing_model"] == 2 and codes["missing_model_stderr"] == [
        next(line for line in codes["missing_model_stderr"] if "no such model file" in line)], codes


def test_pi5_bookworm_arm64(arm_files, tmp_path):
    """Pi 5, 64-bit Pi OS: LiteRT gives x86's raw int8 outputs bit for bit; onnxruntime
    the same top-1."""
    files, photos = arm_files
    (result,) = run_targets([TARGETS["pi5-bookworm"]], sorted(files.iterdir()), sorted(photos.iterdir()),
                            DEFAULT_CACHE, tmp_path, float_photos=FLOAT_PHOTOS, cli_photos=CLI_PHOTOS)
    print("\n" + summary([result]))
    assert {r["file"] for r in result["rows"]} == {p.name for p in files.iterdir()}
    check(result)


@pytest.mark.parametrize("name", ["pi4-bookworm", "pi5-trixie", "pi4-armhf"])
def test_other_boards(arm_files, tmp_path, name):
    """The other boards, with Lite0's two int8 TFLite files on the first 10 photos (to keep
    CI short), and on the Pi 4 (cortex-a72: no dot-product instructions, other int8 kernels
    than the Pi 5's) the S8S8 ONNX file against its QDQ reference semantics."""
    files, photos = arm_files
    mine = [files / "lite0_int8.tflite", files / "lite0_uint8.tflite"]
    if "onnx" in TARGETS[name].formats:
        mine.append(files / "lite0_s8s8.onnx")
    (result,) = run_targets([TARGETS[name]], mine, sorted(photos.iterdir())[:OTHER_BOARDS_PHOTOS], DEFAULT_CACHE,
                            tmp_path, cli_photos=CLI_PHOTOS)
    print("\n" + summary([result]))
    check(result, MAX_ARMHF_STEPS if name == "pi4-armhf" else 0, OTHER_BOARDS_PHOTOS)
    backend = "tflite-runtime" if name == "pi4-armhf" else "litert"
    assert [row["backend"] for row in result["rows"] if row["file"].endswith(".tflite")] == [backend] * 2
    assert [r["backend"] for r in result["rows"] if r["file"].endswith(".onnx")] == (
        ["onnxruntime"] if "onnx" in TARGETS[name].formats else [])


def test_pip_resolves_on_each_board(tmp_path):
    """What a Pi owner's `pip install 'effnet-lite-edge[EXTRA]'` gets, binary wheels only:
    numpy, Pillow and the one backend (no torch, no onnx)."""
    wheel = build_wheel(tmp_path)
    for python, tags, extra in RESOLUTIONS:
        got = {r.split("==")[0].replace("_", "-").lower(): r.split("==")[1]
               for r in resolve(python, tags, extra, wheel, DEFAULT_CACHE / "downloads" / f"{python}-{tags[0]}")}
        backend = {"tflite": "ai-edge-litert", "onnx": "onnxruntime",
                   "tflite-legacy": "tflite-runtime"}[extra.split(",")[0]]
        assert backend in got and "effnet-lite-edge" in got, (python, extra, got)
        assert not {"torch", "onnx", "mediapipe"} & set(got), got
        if extra != "tflite-legacy":
            assert {"numpy", "pillow"} <= set(got), got
        else:
            assert got["tflite-runtime"].startswith("2.14"), got
        if "serve" in extra:        # with the fast HTTP parser and event loop: aarch64 has wheels
            assert {"uvicorn", "starlette", "python-multipart", "prometheus-client", "httptools",
                    "uvloop"} <= set(got), got


def test_effnet_serve_on_pi5(arm_files, tmp_path):
    """effnet-serve with its worker process on the emulated Pi 5, asked from x86 over
    loopback: the same answers as x86 effnet-infer, a 400 for a bad image, a clean stop."""
    import json
    from effnet_lite.benchmarks.arm_serve import emulator, serve_check
    from tests_helpers import run_module
    files, photos = arm_files
    model = files / "lite0_int8.tflite"
    chosen = sorted(photos.iterdir())[:4]
    emu = emulator(TARGETS["pi5-bookworm"], build_wheel(tmp_path / "wheel"), DEFAULT_CACHE)
    result = serve_check(emu, model, chosen, tmp_path / "serve")
    print(f"\neffnet-serve on the emulated Pi 5: started in {result['startup_seconds']} s; {result['banner']}")
    code, out, err = run_module("effnet_lite.apps.infer", *chosen, "--model", model, "--json")
    assert code == 0, err
    for line in out.splitlines():
        x86 = json.loads(line)
        arm = result["answers"][os.path.basename(x86["source"])]
        assert [c["index"] for c in arm] == [c["index"] for c in x86["categories"]], arm
        assert max(abs(a["score"] - b["score"]) for a, b in zip(arm, x86["categories"])) < 1e-6
    assert result["bad_image"][0] == 400 and "upload" in result["bad_image"][1]["error"]
    assert result["health"][0] == 200 and result["health"][1]["workers_ready"] == 1
    assert result["model"]["backend"] == "litert" and result["model"]["digest"].startswith("sha256:")
    workers = [w for w in result["workers"] if "spawn_main" in w]
    assert len(workers) == 1 and workers[0].startswith("qemu-aarch64-static "), result["workers"]
    assert result["exit"] == 0, result["stderr"]
    assert not [s for s in result["stderr"] if "Traceback" in s or "error" in s.lower()], result["stderr"]
