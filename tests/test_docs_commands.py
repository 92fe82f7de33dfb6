"""The documents' commands, run as written: every effnet-* line of a bash block in README.md
and docs/, in that document's order, in a folder that holds the files it names (photo.jpg, photos/,
lite0_int8.tflite, ...) with ../shared beside it as in a checkout. A command that cannot run on
this machine is named in CANNOT with the reason; an entry there that no document shows any more
fails. The effnet-bench lines (but --quick ones) measure for a minute or more each: they run
with --docs-bench (about 2 minutes more), to keep CI within its budget."""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from conftest import DEV_DIR, ROOT, dev_rows, superclass_rows
from tests_helpers import require_module, write_video

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RAY = "a Ray cluster of several nodes (tests/test_ray_cluster.py runs the documented ray commands)"
LONG = "a benchmark of every variant (many minutes); the tables it made are checked against its JSON (test_docs.py)"
CANNOT = {
    "effnet-export lite3 --weights tf_efficientnet_lite3.pth --calib-dir photos/":
        "needs a Lite3 checkpoint, and none ships (test_weights.py loads a timm-format Lite3 checkpoint)",
    "effnet-infer --video /dev/video0 --model lite0_int8.tflite": "needs a camera",
    "effnet-label /data/archive --model lite0_int8.tflite --output labels/ --engine ray": RAY,
    "effnet-label /shared/photos --model lite0_int8.tflite --output labels/ --engine ray --workers 4 "
    "--ray-address HEAD:6379": RAY,
    "effnet-check compare ref/ --strict": "demands raw outputs bit-identical to the reference, which a board "
        "running LiteRT on 64-bit ARM gives (tests/test_arm.py); here the .onnx file runs fused x86 kernels",
    "effnet-quant-report --data ../shared/data/imagenet-sample-dev": LONG,
    **{c: LONG for c in (
        "effnet-export --all models/ --calib-dir ../shared/data/imagenet-sample-dev",
        "effnet-export $v --random-init --precision $p --format $f --calib-dir ../shared/data/imagenet-sample-dev "
        "--calib-count 16 -o models/${v}_${p}.${f}; done; done; done",
        "effnet-bench models/lite{0,1,2,3,4}_{int8,fp32}.{tflite,onnx} --torch lite0,lite1,lite2,lite3,lite4 "
        "--torch-random-init --threads 1,2 --mode invoke --runs 30 --json bench_invoke.json",
        "effnet-bench models/lite0_{int8,fp32}.{tflite,onnx} --torch lite0 --threads 1,2 --runs 30 --no-rss "
        "--json bench_e2e.json",
        "effnet-eval models/lite{0,1,2}_{int8,fp32}.tflite models/lite{0,1,2}_int8.onnx --torch lite0 "
        "--data ../shared/data/imagenet-sample-dev --json eval.json")},
}
BENCH = "effnet-bench "
SERVE_PORT = 8000          # the documented default: the serving commands take turns on it
PHOTOS = 8


def commands(document: Path) -> list[str]:
    """The document's effnet-* command lines, in order (continuations joined, comments cut)."""
    out = []
    for block in re.findall(r"(?ms)^```bash\n(.*?)^```", document.read_text()):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line.split("  #")[0]).strip()
            if line.startswith("effnet-"):
                out.append(re.sub(r"\s+", " ", line))
    return out


def test_every_documented_command_is_run_or_says_why_not():
    shown = {c for d in DOCUMENTS for c in commands(d)}
    assert len(shown) >= 30
    assert set(CANNOT) <= shown, f"no document shows {sorted(set(CANNOT) - shown)}"


def write_photos(folder: Path, paths: list[Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copy(path, folder / (path.stem.lower() + ".jpg"))


def write_checkpoint(work: Path, classes: list[str]) -> None:
    """my_finetune.pth: Lite0's ImageNet network with a new head of `classes` (timm format);
    my_model/model.safetensors: the same as effnet-train writes it (names and crop inside)."""
    import torch
    from effnet_lite.model_export.training.checkpoint import save_checkpoint
    from effnet_lite.model_export.weights import load_model
    model = load_model("lite0")
    model.classifier = torch.nn.Linear(model.classifier.in_features, len(classes))
    torch.save(model.state_dict(), work / "my_finetune.pth")
    (work / "labels.txt").write_text("\n".join(classes) + "\n")
    (work / "my_model").mkdir()
    save_checkpoint(work / "my_model" / "model.safetensors", model.state_dict(), classes, "lite0", {"crop_pct": 1.0})


@pytest.fixture
def folder(lite0_files, tmp_path):
    """A checkout's neighbourhood: work/ (the current folder) with the files the documents name,
    and ../shared beside it."""
    groups: dict = {}
    for r in superclass_rows():          # (not there: a skip, or in CI a failure)
        groups.setdefault(r["superclass"], []).append(r)
    (tmp_path / "shared").symlink_to(DEV_DIR.parent.parent.resolve())
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    paths = [r["path"] for r in dev_rows()]
    write_photos(work / "photos", paths[:PHOTOS])
    shutil.copy(paths[0], work / "photo.jpg")
    shutil.copy(paths[1], work / "some_photo.jpg")
    (work / "list.txt").write_text("".join(f"photos/{p.name}\n" for p in sorted((work / "photos").iterdir())))
    for name in ("bird", "dog"):
        write_photos(work / "my_photos" / name, [DEV_DIR / r["file"] for r in groups[name][:6]])
    for name in ("int8.tflite", "fp32.tflite"):
        shutil.copy(lite0_files[name], work / f"lite0_{name}")
    lite0_files["exporter"].export(work / "lite0_s8s8.onnx", "int8", "onnx", "int8", verify=False)
    (home / ".effnet-token").write_text(os.urandom(16).hex() + "\n")
    (home / ".effnet-token").chmod(0o600)
    return work, home


def run(command: str, work: Path, home: Path) -> None:
    t0 = time.perf_counter()
    try:
        _run(command, work, home)
    finally:
        print(f"{time.perf_counter() - t0:6.1f} s  {command}")


def _run(command: str, work: Path, home: Path) -> None:
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if command.startswith("effnet-serve"):
        return serve(command, work, env)
    done = subprocess.run(["bash", "-o", "pipefail", "-ec", command], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"


def serve(command: str, work: Path, env: dict) -> None:
    """A serving command: up (its /healthz answers 200 on the documented port), then SIGTERM: exit 0."""
    with open(Path(tempfile.gettempdir()) / f"effnet-docs-port-{SERVE_PORT}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=work, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline, status = time.monotonic() + 120, None
            while status != 200 and proc.poll() is None and time.monotonic() < deadline:
                try:
                    status = urllib.request.urlopen(f"http://127.0.0.1:{SERVE_PORT}/healthz", timeout=5).status
                except OSError:
                    time.sleep(0.3)
            said = proc.stderr.read()[-3000:] if proc.poll() is not None else ""
            assert status == 200, f"{command}: no /healthz\n{said}"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, f"{command}\n{proc.stderr.read()[-3000:]}"
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if set(commands(d)) - set(CANNOT)], ids=lambda p: p.name)
def test_the_documents_commands_run_as_written(document, folder, request):
    work, home = folder
    bench = request.config.getoption("--docs-bench")
    if document.name in ("train.md",):      # there photos/ is what a user trains on: class folders
        shutil.rmtree(work / "photos")
        shutil.copytree(work / "my_photos", work / "photos")
    if document.name == "infer-and-label.md":
        require_module("av", "PyAV is not installed (the video extra)")
        frames = [Image.open(r["path"]).convert("RGB").resize((320, 240)) for r in dev_rows()[:3]]
        write_video(work / "clip.mp4", frames, 5, "mpeg4", "yuv420p")
    if document.name == "export-and-quantization.md":
        write_checkpoint(work, ["cat", "dog", "fox"])
    for command in commands(document):
        if command.startswith("effnet-check compare") and not (work / "ref").exists():
            # a reference written on the machine that made the files, as raspberry-pi.md shows
            run("effnet-check write ref/ --backend onnxruntime-reference --model lite0_int8.tflite "
                "--model lite0_s8s8.onnx photos/*.jpg", work, home)
        if command not in CANNOT and (bench or not command.startswith(BENCH) or "--quick" in command):
            run(command, work, home)
