"""What a wheel of this project installs: one import package, `effnet_lite`, and commands that
work with the extras they have or say in one line which extra they lack.

Builds the wheel, installs it with only the `tflite` extra into a fresh venv (packages from the
registry, as a user's `pip install` gets them) and runs the entry points there.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import ROOT
from tests_helpers import unavailable

OLD_NAMES = ("runtime", "apps", "benchmarks", "model_export")


@pytest.fixture(scope="module")
def tflite_venv(tmp_path_factory):
    from effnet_lite.benchmarks.arm_packages import build_wheel
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"))
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    done = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", f"{wheel}[tflite]"],
                          capture_output=True, text=True, timeout=900)
    if done.returncode:
        unavailable(f"cannot install the wheel with [tflite] here: {done.stderr.strip()[-300:]}")
    return env_dir


def run(env_dir: Path, command: str, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(env_dir / "bin" / command), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_the_wheel_installs_one_import_package(tflite_venv, tmp_path):
    """Only effnet_lite lands in site-packages (RECORD), the old names do not import, and
    the runtime needs neither torch nor onnx there."""
    python = tflite_venv / "bin" / "python"
    code = ("import importlib.metadata as md, json, sys\n"
            "files = md.distribution('effnet-lite-edge').files\n"
            "tops = sorted({f.parts[0] for f in files if not f.parts[0].endswith('.dist-info') and f.parts[0] != '..'})\n"
            "import effnet_lite\n"
            "old = [n for n in %r if __import__('importlib.util').util.find_spec(n)]\n"
            "print(json.dumps({'tops': tops, 'old': old, 'heavy': sorted(m for m in ('torch', 'onnx') if m in sys.modules),"
            " 'text': md.distribution('effnet-lite-edge').read_text('top_level.txt')}))" % (OLD_NAMES,))
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["tops"] == ["effnet_lite"] and got["text"].split() == ["effnet_lite"], got
    assert got["old"] == [] and got["heavy"] == [], got


def test_effnet_infer_works_with_the_tflite_extra(tflite_venv, lite0_files, tmp_path):
    """The installed command classifies as this checkout's runtime does."""
    from effnet_lite import Classifier
    photo = next(lite0_files["photos"].iterdir())
    done = run(tflite_venv, "effnet-infer", photo, "--model", lite0_files["int8.tflite"], "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with Classifier.from_file(lite0_files["int8.tflite"]) as clf:
        expected = [c.index for c in clf.classify(photo).categories]
    assert [c["index"] for c in json.loads(done.stdout)["categories"]] == expected


@pytest.mark.parametrize("command, args, extra", [
    ("effnet-export", ["lite0", "-o", "{tmp}/x.tflite"], "export"),
    ("effnet-quant-report", ["--data", "{photos}"], "export"),
    ("effnet-train", ["{photos}", "--output", "{tmp}/trained"], "train"),
    ("effnet-bench", ["{model}", "--quick", "--no-rss"], "bench"),            # the default photo
    ("effnet-bench", ["{model}", "--torch", "lite0", "--photo", "{photo}"], "export"),
    ("effnet-serve", ["--model", "{model}"], "serve"),
    ("effnet-label", ["{photos}", "--model", "{model}", "--output", "{tmp}/out", "--engine", "ray"], "cluster"),
    ("effnet-eval", ["{model}", "--data", "{photos}", "--engine", "ray"], "cluster"),
])
def test_commands_name_the_extra_they_lack(tflite_venv, lite0_files, tmp_path, command, args, extra):
    subs = {"tmp": tmp_path, "photos": lite0_files["photos"], "model": lite0_files["int8.tflite"],
            "photo": next(lite0_files["photos"].iterdir())}
    done = run(tflite_venv, command, *[a.format(**subs) for a in args], cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{command}: error: ") and f"'effnet-lite-edge[{extra}]'" in lines[0], lines


def test_nothing_imports_the_old_names():
    """No module, test, harness or documented example imports runtime/apps/benchmarks/model_export
    as top-level packages, nor runs them with -m."""
    pattern = re.compile(r"^\s*(from|import) (%s)\b|-m (%s)\.|[\"'](%s)\.[a-z_]+[\"']"
                         % (("|".join(OLD_NAMES),) * 3), re.M)
    found = []
    ours = [p for folder in ("model_export", "runtime", "apps", "benchmarks", "tests") for p in (ROOT / folder).rglob("*.py")]
    for path in sorted(ours) + [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "pyproject.toml"]:      # (not a .venv in the checkout)
        for m in pattern.finditer(path.read_text()):
            found.append(f"{path.relative_to(ROOT)}: {m.group(0).strip()}")
    assert found == []
    assert sys.modules.get("effnet_lite") is not None
