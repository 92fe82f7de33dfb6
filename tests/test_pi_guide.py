"""The Raspberry Pi guide's install commands (docs/raspberry-pi.md, the blocks marked <!-- pi-guide -->), run
verbatim on an emulated Pi 5 (64-bit) and Pi 4 (32-bit) with pip on the board
(benchmarks/pi_guide.py). About 2 minutes each here, so behind `--pi-guide`; the commands'
shape is checked always."""
from __future__ import annotations

import os
import re
import shutil

import pytest

from effnet_lite.benchmarks.pi_guide import GUIDES, guide_commands
from tests_helpers import run_module, unavailable


@pytest.mark.parametrize("board", list(GUIDES))
def test_the_guide_installs_into_a_venv(board):
    """What Pi OS bookworm accepts: a venv first, then pip and effnet-infer from it."""
    commands = [c for c in guide_commands(board) if not c.startswith("sudo apt install ")]
    assert commands[0].startswith("python3 -m venv ") and commands[1].startswith(". ")
    assert commands[2] == "pip install 'effnet-lite-edge[{}]'".format("tflite" if board == "64-bit" else "tflite-legacy")
    assert commands[-1] == "effnet-infer photo.jpg --model lite0_int8.tflite"


def top5(text: str) -> list[tuple[int, float]]:
    """(class index, score %) of effnet-infer's lines."""
    return [(int(m.group(2)), float(m.group(1))) for m in re.finditer(r"([\d.]+)%\s+.*?\[(\d+)\]", text)]


@pytest.mark.parametrize("board", list(GUIDES))
def test_the_guide_verbatim_on_an_emulated_board(request, lite0_files, board):
    """The commands as the guide gives them, by bash on an emulated Pi OS bookworm userland
    (Pi 5 arm64, Pi 4 armhf): they all succeed, pip installs this checkout's wheel on the
    board, and effnet-infer there prints what x86 prints for the same file and photo: the same
    lines with LiteRT (int8 XNNPACK is bit-identical), the same classes within 2 points with
    tflite-runtime 2.14 (TFLite's own int8 kernels, a few steps from LiteRT's on x86 too)."""
    if not request.config.getoption("--pi-guide"):
        pytest.skip("the Pi guides on emulated boards take about 2 minutes each: run with --pi-guide")
    if os.geteuid() != 0 or not shutil.which("debootstrap") or not shutil.which(GUIDES[board][1].qemu):
        unavailable("needs root, debootstrap and qemu-user-static (.ci/run installs them)")
    from effnet_lite.benchmarks.pi_guide import run
    model, photo = lite0_files["int8.tflite"], lite0_files["photos"] / "chelsea.jpg"
    result = run(model, photo, board)
    print(f"\npi guide ({board}): {len(result['commands'])} commands, {result['seconds']:.0f} s"
          f"{' (venv cached)' if result['cached_venv'] else ''}")
    assert result["exit"] == 0 and result["completed"] == len(result["commands"]), result["stderr_tail"]
    if not result["cached_venv"]:
        assert "Successfully installed" in result["stdout"] and "effnet-lite-edge-" in result["stdout"]
    code, x86, _ = run_module("effnet_lite.apps.infer", photo, "--model", model)
    assert code == 0 and len(top5(x86)) == 5
    board_top5 = top5(result["stdout"])
    if board == "64-bit":
        assert board_top5 == top5(x86), (result["stdout"], x86)
    else:
        assert sorted(i for i, _ in board_top5) == sorted(i for i, _ in top5(x86)), (result["stdout"], x86)
        scores = dict(top5(x86))     # (measured on this photo: up to 1.4 points apart)
        assert all(abs(score - scores[i]) <= 2.0 for i, score in board_top5), (result["stdout"], x86)
