"""What one more Ray node buys: effnet-label's images/s on the same photos, in one run, with
the local engine (--workers processes), Ray on one node (a head of that many CPUs), and Ray on
a head plus a second raylet (the CPUs split between them), both real `ray start` clusters on
loopback (benchmarks/ray_cluster.py, which needs root).

Each figure is the wall time of the whole effnet-label command, as a user waits for it:
connecting to Ray, starting the actors (each opens the model) and the Ray Data pipeline
included; the clusters' own start is not. On one machine the two raylets share the same
cores, so the second node adds no compute: the ratios show what Ray costs, not what a real
second machine would add. Rounds interleave the settings; medians are printed.

    python -m effnet_lite.benchmarks.ray_scaling PHOTOS --model lite0_int8.tflite [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from effnet_lite.dataset import image_files
from effnet_lite.progress import Progress

from .machine import machine_info
from .ray_cluster import ClusterError, LoopbackCluster

LABEL = [sys.executable, "-m", "effnet_lite.apps.label"]


def timed_label(run, source: Path, model: Path, out: Path, workers: int, extra: list[str]) -> float:
    started = time.perf_counter()
    done = run([*LABEL, source, "--model", model, "--output", out, "--workers", str(workers), *extra])
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):           # 1: some images failed, recorded
        raise RuntimeError(f"effnet-label failed: {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def measure(photos: Path, model: Path, workers: int, rounds: int) -> dict:
    count = len(image_files(photos))
    if not count:
        raise RuntimeError(f"{photos}: no images")
    times: dict[str, list[float]] = {"local": [], "ray, 1 node": [], "ray, 2 raylets": []}

    def local_run(argv):
        return subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=3600)
    with tempfile.TemporaryDirectory(prefix="effnet-ray-bench-") as tmp, \
            LoopbackCluster([workers]) as one, LoopbackCluster([workers - workers // 2, workers // 2]) as two, \
            Progress(rounds * 3, "ray scaling") as bar:
        for r in range(rounds):
            for name, run, extra in (("local", local_run, []),
                                     ("ray, 1 node", one.run, ["--engine", "ray", "--ray-address", one.address]),
                                     ("ray, 2 raylets", two.run, ["--engine", "ray", "--ray-address", two.address])):
                out = Path(tmp) / f"{r}-{len(times[name])}-{name.replace(' ', '').replace(',', '')}"
                times[name].append(timed_label(run, photos, model, out, workers, extra))
                bar.update()
    med = {name: statistics.median(t) for name, t in times.items()}
    rows = [{"setting": name, "seconds": med[name], "images_per_s": count / med[name],
             "vs_local": med["local"] / med[name]} for name in times]
    return {"photos": str(photos), "images": count, "model": model.name, "workers": workers, "rounds": rounds,
            "machine": machine_info(), "rows": rows}


def print_report(r: dict) -> None:
    print(f"ray scaling: {r['images']} images of {r['photos']}, {r['model']}, --workers {r['workers']}, "
          f"median of {r['rounds']} interleaved round(s); {r['machine']['cpu']}, {r['machine']['cores']} cores, "
          f"{r['machine']['cpu_int8_class']}")
    print(f"{'setting':<16} {'seconds':>8} {'images/s':>9} {'vs local':>9}")
    for row in r["rows"]:
        print(f"{row['setting']:<16} {row['seconds']:>8.1f} {row['images_per_s']:>9.1f} {row['vs_local']:>9.2f}")
    one, two = (row["images_per_s"] for row in r["rows"][1:])
    print(f"  a second raylet on the same {os.cpu_count()} cores: {two / one:.2f}x Ray on one node "
          "(it adds Ray's overhead, not cores; on another machine it would add that machine's cores)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m effnet_lite.benchmarks.ray_scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", type=Path, help="a folder of images")
    p.add_argument("-m", "--model", type=Path, required=True)
    p.add_argument("--workers", type=int, default=max(2, min(os.cpu_count() or 2, 4)),
                   help="processes or actors, and CPUs of the clusters (cores, 2 to 4)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args(argv)
    if args.workers < 2 or args.rounds < 1:
        p.error("--workers must be at least 2 (two raylets), --rounds at least 1")
    if not args.photos.is_dir() or not args.model.is_file():
        p.error(f"{args.photos if not args.photos.is_dir() else args.model}: not found")
    try:
        report = measure(args.photos, args.model, args.workers, args.rounds)
    except (ClusterError, RuntimeError) as e:
        print(f"ray_scaling: error: {e}", file=sys.stderr)
        return 2
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
