"""The Raspberry Pi check under emulation: Debian userlands for arm64 and armhf run by
qemu-user, the runtime installed from a wheel built from this checkout, and our files (made
here on x86) compared with the x86 answers of the same run (int8 ONNX files: with their
QDQ reference semantics, which do not depend on the x86 CPU class).

    python -m effnet_lite.benchmarks.arm_emulation --files DIR --photos DIR [--targets pi5-bookworm,...]

Per target: `effnet-check compare` (raw outputs on the x86 crops, and the photos end to end),
`effnet-infer --json` with an int8 file on a bad image and then the first photos (top-1
against x86's; exit 1, the photos after it still answered), and on a missing model (exit 2).
Emulation says nothing about speed.

Needs root, qemu-user-static and debootstrap (apt-get). Userlands are cached under the temp
folder (`--cache`), and so are the dependencies pip installs (for a week); a second run
only installs the new wheel.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from effnet_lite.model_export.cli_checks import positive_int

from .arm_packages import DEFAULT_CACHE, EmulationError, build_wheel, install_runtime, resolve
from .arm_targets import RESOLUTIONS, TARGETS, Target


def log(msg: str) -> None:
    print(f"arm: {msg}", file=sys.stderr, flush=True)


def apt_mirror() -> str:
    """The Debian mirror apt already uses here."""
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*")) + [Path("/etc/apt/sources.list")]:
        text = f.read_text(errors="replace") if f.is_file() else ""
        for url in re.findall(r"(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(https?://\S+)", text):
            if "security" not in url:
                return url.rstrip("/")
    return "http://deb.debian.org/debian"


def missing_tools(targets) -> list[str]:
    tools = {"debootstrap", "dpkg-deb"} | {t.qemu for t in targets}
    return sorted(t for t in tools if shutil.which(t) is None)


def build_rootfs(target: Target, cache: Path) -> Path:
    """A Debian userland for the target (cached): debootstrap's first stage downloads and
    unpacks the essential packages without running ARM code; the rest is unpacked here."""
    root = cache / target.name / "rootfs"
    recipe = json.dumps([2, target.arch, target.suite, target.debian_packages, target.cpuinfo])
    stamp = root / ".effnet-recipe"
    if stamp.is_file() and stamp.read_text() == recipe:
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    include = ",".join(("python3",) + target.debian_packages)
    start = time.perf_counter()
    log(f"{target.name}: debootstrap {target.suite} {target.arch} (first run only)")
    done = subprocess.run(["debootstrap", "--foreign", f"--arch={target.arch}", "--variant=minbase",
                           f"--include={include}", target.suite, str(root), apt_mirror()],
                          capture_output=True, text=True)
    if done.returncode:
        raise EmulationError(f"debootstrap failed for {target.name}: {done.stdout[-800:]}{done.stderr[-800:]}")
    for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    # no maintainer script ran, so no update-alternatives: link BLAS/LAPACK where Debian's
    # numpy looks for them (/usr/lib/<triplet>/libblas.so.3)
    for lib in root.glob("usr/lib/*/*/lib*.so.3"):
        if lib.parent.name in ("blas", "lapack") and not (lib.parent.parent / lib.name).exists():
            (lib.parent.parent / lib.name).symlink_to(f"{lib.parent.name}/{lib.name}")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cpuinfo").write_text(target.cpuinfo)
    stamp.write_text(recipe)
    log(f"{target.name}: userland ready in {time.perf_counter() - start:.0f} s")
    return root


@dataclass
class Emulator:
    target: Target
    root: Path
    site: tuple[Path, ...]      # PYTHONPATH: our wheel, then its dependencies
    seconds: float = 0.0
    runs: list = field(default_factory=list)

    def command(self, module: str, *args, pythonpath: tuple = ()) -> tuple[list[str], dict]:
        """The command line and environment that run `python -m module` on the board."""
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
               "PYTHONPATH": os.pathsep.join(map(str, [*pythonpath, *self.site])),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
        return [*self.python(), "-m", module, *map(str, args)], env

    def python(self) -> list[str]:
        """The emulated Python interpreter, as a command line."""
        return [self.target.qemu, "-L", str(self.root), "-cpu", self.target.cpu,
                str(self.root / "usr/bin" / f"python{self.target.python}")]

    def run(self, module: str, *args, timeout: int = 1800) -> subprocess.CompletedProcess:
        cmd, env = self.command(module, *args)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        self.seconds += time.perf_counter() - start
        return done


def x86_reference(files: list[Path], photos: list[Path], ref: Path, float_photos: int) -> dict:
    """The answers the boards must give: TFLite files as LiteRT runs them here (XNNPACK's
    int8 kernels are exact), int8 ONNX files by their QDQ semantics, not by whatever int8
    kernels this x86 CPU happens to have (runtime/cpu.py). Float files keep the first
    `float_photos` answers only: emulated float math is ~6x slower than int8, and their
    check is the summation order (last-bit differences), which shows on any photo."""
    from effnet_lite.apps.check import write
    doc = write(ref, files, photos, backend="onnxruntime-reference")
    for model in doc["models"]:
        if model["precision"] == "fp32":
            model["results"] = model["results"][:float_photos]
    (ref / "reference.json").write_text(json.dumps(doc))
    return doc


def x86_top1(model: Path, photos: list[Path]) -> list[int]:
    from effnet_lite import Classifier
    with Classifier.from_file(model) as clf:
        return [clf.classify(p).categories[0].index for p in photos]


def cli_model(doc: dict, files: list[Path]) -> Path:
    """The file effnet-infer is checked with: an int8 TFLite file if there is one."""
    tflite = [m for m in doc["models"] if m["file"].endswith(".tflite")]
    best = next((m for m in tflite if m["precision"] == "int8"), tflite[0])
    return next(f for f in files if f.name == best["file"])


def check_target(target: Target, files: list[Path], photos: list[Path], ref: Path, wheel: Path,
                 cache: Path, work: Path, model: Path, cli_photos: list[Path]) -> dict:
    """Everything the check asks of one target; a dict of what was measured."""
    emu = Emulator(target, build_rootfs(target, cache), install_runtime(target, wheel, cache))
    work.mkdir(parents=True, exist_ok=True)
    probe = emu.run("platform")
    if probe.returncode:
        raise EmulationError(f"{target.name}: Python does not start under {target.qemu}: {probe.stderr[-500:]}")
    out = {"target": target.name, "board": target.board, "python": target.python, "cpu": target.cpu}
    compare = emu.run("effnet_lite.apps.check", "compare", ref, "--models-dir", files[0].parent, "--images-dir",
                      photos[0].parent, "--json", work / "compare.json")
    if compare.returncode not in (0, 1) or not (work / "compare.json").is_file():
        raise EmulationError(f"{target.name}: effnet-check failed ({compare.returncode}): "
                             f"{compare.stdout[-800:]}{compare.stderr[-800:]}")
    result = json.loads((work / "compare.json").read_text())
    out["packages"] = result["platform"]["packages"]
    out["rows"] = result["rows"]
    out["compare_output"] = compare.stdout
    # effnet-infer as a user runs it, with `model` (compare has run every photo end to end
    # already): a bad image first (exit 1, one line naming it), then photos still answered
    bad = work / "not_a_photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated JPEG")
    infer = emu.run("effnet_lite.apps.infer", bad, *cli_photos, "--model", model, "--json", "-k", "1")
    tops = [json.loads(line)["categories"][0]["index"] for line in infer.stdout.splitlines()]
    out["infer"] = {"model": model.name, "exit": infer.returncode, "photos": len(cli_photos), "top1": tops,
                    "stderr_lines": infer.stderr.splitlines()}
    missing = emu.run("effnet_lite.apps.infer", photos[0], "--model", work / "missing.tflite")
    out["exit_codes"] = {"missing_model": missing.returncode, "missing_model_stderr": missing.stderr.splitlines()}
    out["emulated_seconds"] = round(emu.seconds, 1)
    return out


def run_targets(targets: list[Target], files: list[Path], photos: list[Path], cache: Path,
                work: Path, raise_errors: bool = True, float_photos: int | None = None,
                cli_photos: int = 5) -> list[dict]:
    """Each target's check: every file on `photos` (float files on the first `float_photos`),
    effnet-infer on the first `cli_photos`."""
    missing = missing_tools(targets)
    if missing:
        raise EmulationError(f"missing tools: {', '.join(missing)} (apt-get install qemu-user-static debootstrap)")
    work.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(work / "wheel")
    results = []
    for target in targets:
        kinds = {".tflite"} | ({".onnx"} if "onnx" in target.formats else set())
        mine = [f for f in files if f.suffix in kinds]
        ref = work / f"ref-{target.name}"
        doc = x86_reference(mine, photos, ref, len(photos) if float_photos is None else float_photos)
        model = cli_model(doc, mine)
        (cache / target.name).mkdir(parents=True, exist_ok=True)
        with open(cache / target.name / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)     # one builder per userland (parallel tests)
            try:
                row = check_target(target, mine, photos, ref, wheel, cache, work / target.name, model,
                                   photos[:cli_photos])
            except EmulationError as e:
                if raise_errors:
                    raise
                log(f"{target.name}: {e}")
                results.append({"target": target.name, "error": str(e)})
                continue
        row["infer"]["x86_top1"] = x86_top1(model, photos[:cli_photos])
        results.append(row)
        log(f"{target.name}: done in {row['emulated_seconds']:.0f} s emulated")
    return results


def summary(results: list[dict]) -> str:
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['target']}: FAILED: {r['error']}")
            continue
        same = sum(a == b for a, b in zip(r["infer"]["top1"], r["infer"]["x86_top1"]))
        lines.append(f"{r['board']} (qemu -cpu {r['cpu']}, Python {r['python']}, "
                     f"{', '.join(f'{k} {v}' for k, v in sorted(r['packages'].items()))}):")
        from effnet_lite.apps.check import format_row
        lines += [f"  {format_row(row)}" for row in r["rows"]]
        lines.append(f"  effnet-infer --json ({r['infer']['model']}, a bad image first): top-1 = x86 on "
                     f"{same}/{r['infer']['photos']}; exit codes: bad image {r['infer']['exit']}, "
                     f"missing model {r['exit_codes']['missing_model']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m effnet_lite.benchmarks.arm_emulation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=Path, required=True, help="folder of .tflite/.onnx files made by effnet-export")
    p.add_argument("--photos", type=Path, required=True, help="folder of photos (the first --count are used)")
    p.add_argument("--count", type=positive_int, default=20, help="photos per file: the first N of --photos (20)")
    p.add_argument("--float-count", type=positive_int, help="photos for fp32 files (default: --count; "
                   "emulated float math is ~6x slower than int8)")
    p.add_argument("--cli-count", type=positive_int, default=5, help="photos for the effnet-infer run (5)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated: {', '.join(TARGETS)}")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"userland cache ({DEFAULT_CACHE})")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--resolve", action="store_true",
                   help="also check what `pip install 'effnet-lite-edge[EXTRA]'` resolves to per target")
    args = p.parse_args(argv)
    unknown = [t for t in args.targets.split(",") if t not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}: choose from {', '.join(TARGETS)}")
    for folder in (args.files, args.photos):
        if not folder.is_dir():
            p.error(f"{folder}: not a folder")
    files = sorted(f for f in args.files.glob("*") if f.suffix in (".tflite", ".onnx"))
    photos = sorted(f for f in args.photos.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.count]
    if not files or not photos:
        p.error("--files needs .tflite/.onnx files and --photos needs photos")
    targets = [TARGETS[t] for t in args.targets.split(",")]
    try:
        with tempfile.TemporaryDirectory() as work:
            results = run_targets(targets, files, photos, args.cache, Path(work), raise_errors=False,
                                  float_photos=args.float_count, cli_photos=args.cli_count)
            if args.resolve:
                wheel = build_wheel(Path(work) / "wheel")
                for python, tags, extra in RESOLUTIONS:
                    got = resolve(python, tags, extra, wheel, args.cache / "downloads" / f"{python}-{tags[0]}")
                    print(f"Python {python} {tags[0]} [{extra}]: {' '.join(got)}")
    except EmulationError as e:
        print(f"arm_emulation: error: {e}", file=sys.stderr)
        return 2
    print(summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 2 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
