"""The Raspberry Pi guide's install commands (README, the block marked <!-- pi-guide -->), run
verbatim on an emulated Pi 5 with pip on the board (benchmarks/pi_guide.py). About 2 minutes
here, so behind `--pi-guide`; the commands' shape is checked always."""
from __future__ import annotations

import os
import shutil

import pytest

from effnet_lite.benchmarks.pi_guide import guide_commands
from tests_helpers import run_module, unavailable


def test_the_guide_installs_into_a_venv():
    """What Pi OS bookworm accepts: a venv first, then pip and effnet-infer from it."""
    commands = guide_commands()
    assert commands[0].startswith("python3 -m venv ") and commands[1].startswith(". ")
    assert commands[2] == "pip install 'effnet-lite-edge[tflite]'"
    assert commands[-1] == "effnet-infer photo.jpg --model lite0_int8.tflite"


def test_the_guide_verbatim_on_an_emulated_pi5(request, lite0_files):
    """The commands as the guide gives them, by bash on an emulated Pi 5 bookworm userland:
    they all succeed, pip installs this checkout's wheel on the board, and effnet-infer there
    prints what it prints on x86 for the same file and photo (int8 XNNPACK: bit-identical)."""
    if not request.config.getoption("--pi-guide"):
        pytest.skip("the Pi guide on an emulated Pi 5 takes about 2 minutes: run with --pi-guide")
    if os.geteuid() != 0 or not shutil.which("debootstrap") or not shutil.which("qemu-aarch64-static"):
        unavailable("needs root, debootstrap and qemu-user-static (.ci/run installs them)")
    from effnet_lite.benchmarks.pi_guide import run
    model, photo = lite0_files["int8.tflite"], lite0_files["photos"] / "chelsea.jpg"
    result = run(model, photo)
    print(f"\npi guide: {len(result['commands'])} commands, {result['seconds']:.0f} s"
          f"{' (venv cached)' if result['cached_venv'] else ''}")
    assert result["exit"] == 0 and result["completed"] == len(result["commands"]), result["stderr_tail"]
    if not result["cached_venv"]:
        assert "Successfully installed" in result["stdout"] and "effnet-lite-edge-" in result["stdout"]
    code, x86, _ = run_module("effnet_lite.apps.infer", photo, "--model", model)
    assert code == 0
    lines = lambda text: [line for line in text.splitlines() if "%" in line]  # noqa: E731
    assert lines(result["stdout"]) == lines(x86) and len(lines(x86)) == 5, (result["stdout"], x86)
