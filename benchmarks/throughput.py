"""effnet-bench --mode throughput: images per second on a folder, over a workers x threads grid.

Each grid point runs `effnet-infer FOLDER... --model M -q --workers W --threads T` as a user
would (process start, model load and worker start-up included, diluted by classifying the
folder `--repeat` times); rounds interleave the grid points, and the median of the rounds is
reported, with the ratio of the best multi-worker setting to the best single-process one.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from effnet_lite.dataset import image_files
from effnet_lite.model_export.cli_checks import write_text
from effnet_lite.progress import Progress

from .machine import machine_info


def count_images(folder: Path) -> int:
    return len(image_files(folder))


def run_once(model: Path, folder: Path, repeat: int, workers: int, threads: int) -> float:
    cmd = [sys.executable, "-m", "effnet_lite.apps.infer", *[str(folder)] * repeat, "--model", str(model), "-q",
           "--workers", str(workers), "--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"effnet-infer failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return seconds


def measure(models: list[Path], folder: Path, workers: list[int], threads: list[int], repeat: int,
            rounds: int) -> dict:
    images = count_images(folder) * repeat
    grid = [(m, w, t) for m in models for w in workers for t in threads]
    times = {g: [] for g in grid}
    with Progress(rounds * len(grid), "throughput runs") as bar:
        for _ in range(rounds):
            for g in grid:         # interleaved: every setting sees the same machine state
                times[g].append(run_once(g[0], folder, repeat, g[1], g[2]))
                bar.update()
    rows = [{"model": m.name, "workers": w, "threads": t, "images": images,
             "seconds": statistics.median(times[(m, w, t)]),
             "images_per_s": images / statistics.median(times[(m, w, t)])} for m, w, t in grid]
    for m in models:
        mine = [r for r in rows if r["model"] == m.name]
        single = max((r for r in mine if r["workers"] == 1), key=lambda r: r["images_per_s"], default=None)
        multi = max((r for r in mine if r["workers"] > 1), key=lambda r: r["images_per_s"], default=None)
        if single and multi:
            for r in mine:
                r["vs_best_single"] = r["images_per_s"] / single["images_per_s"]
    return {"folder": str(folder), "repeat": repeat, "rounds": rounds, "rows": rows}


def print_table(report: dict) -> None:
    print(f"throughput: {report['rows'][0]['images']} images per run ({report['folder']} x "
          f"{report['repeat']}), median of {report['rounds']} interleaved rounds, whole command timed")
    print(f"{'model':<28} {'workers':>7} {'threads':>7} {'seconds':>8} {'images/s':>9} {'vs best 1-process':>18}")
    for r in report["rows"]:
        ratio = f"{r['vs_best_single']:.2f}x" if "vs_best_single" in r else "-"
        print(f"{r['model']:<28} {r['workers']:>7} {r['threads']:>7} {r['seconds']:>8.2f} "
              f"{r['images_per_s']:>9.1f} {ratio:>18}")


def report_mode(args, measure, show) -> int:
    """An effnet-bench mode: measure (a RuntimeError/OSError is a one-line error), show the
    report, write it with the machine to --json."""
    try:
        report = measure()
    except (RuntimeError, OSError) as e:
        print(f"effnet-bench: error: {e}", file=sys.stderr)
        return 2
    report["machine"] = machine_info()
    show(report)
    if args.json and not write_text(args.json, json.dumps(report, indent=2), "effnet-bench"):
        return 2
    return 0


def main_from_args(args) -> int:
    """effnet-bench's throughput mode (arguments already checked by effnet-bench)."""
    return report_mode(args, lambda: measure(args.models, args.data, args.workers, args.threads,
                                             args.repeat, args.rounds), print_table)
