"""effnet-bench: latency of model files (and PyTorch eager fp32) side by side, in one run.

Candidates run interleaved, round-robin, so machine drift touches all of them alike;
ratios to the baseline are taken per round and reported as medians.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

from effnet_lite.model_export.cli_checks import (check_model_files, check_output, positive_int, positive_ints,
                                     read_json_report, variant_list, write_text)
from effnet_lite import BackendUnavailableError, ImageError, ModelError, __version__
from effnet_lite.backends import BACKENDS
from effnet_lite.preprocess import PreprocessConfig
from effnet_lite.progress import Progress
from effnet_lite.variants import get_variant

from .candidates import file_candidates, peak_rss_mb, torch_candidates
from .machine import machine_info
from .photos import SIZES, decode, decode_draft, make_jpegs, source_photo
from .recommend import add_agreement, format_advice, recommend
from .stats import median_ratio, summarize

EXAMPLES = """\
examples:
  effnet-bench lite0_int8.tflite lite0_fp32.tflite --torch lite0 --threads 1,2
  effnet-bench models/*.tflite models/*.onnx --torch lite0 --json bench.json --plot bench.png
  effnet-bench lite0_int8.tflite --quick          (a few seconds; for CI or a first look)
  effnet-bench lite0_{int8,fp32}.{tflite,onnx} --mode invoke --data photos/   (ends with the file to deploy here)
  effnet-bench lite0_int8.tflite --all-backends   (LiteRT and tflite-runtime, if both installed)
  effnet-bench lite0_int8.tflite --mode throughput --data photos/ --workers 1,2 --threads 1,2
  effnet-bench lite0_int8.tflite --mode service --data photos/    (effnet-serve vs in-process)
"""

DRAFT_12MP = "12MP_draft_1/8"   # jpeg_decode key: the 12 MP photo decoded at 1/8 DCT scale


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="effnet-bench", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", type=Path, help=".tflite / .onnx files")
    p.add_argument("--torch", default="", metavar="VARIANTS",
                   help="add PyTorch eager fp32 of these variants (e.g. lite0,lite2): the baseline")
    p.add_argument("--torch-random-init", action="store_true",
                   help="allow untrained PyTorch Lite3/4 (latency does not depend on weights)")
    p.add_argument("--threads", default=[1, 2], type=positive_ints, help="thread counts to try (1,2)")
    p.add_argument("--backends", help="backends to use (default: the first installed per file type)")
    p.add_argument("--all-backends", action="store_true", help="every installed backend per file")
    p.add_argument("--mode", default="invoke,e2e",
                   help="invoke (prepared tensor) and/or e2e (JPEG bytes to top-5); default both; "
                        "or throughput (images/s on --data over a --workers x --threads grid), "
                        "or service (effnet-serve with --workers vs in-process, on --data)")
    p.add_argument("--data", type=Path,
                   help="throughput, service: a folder of images; invoke/e2e: photos on which each "
                        "file's top-1 agreement with the fp32 file of its variant is measured, for "
                        "the closing recommendation (the first 200)")
    p.add_argument("--workers", default=[1, 2], type=positive_ints,
                   help="throughput, service: worker counts (1,2)")
    p.add_argument("--repeat", type=positive_int, default=5,
                   help="throughput: classify the folder this many times per run (5)")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="throughput, service: interleaved rounds (3)")
    p.add_argument("--requests", type=positive_int, default=400,
                   help="service: classifications per worker and run (400)")
    p.add_argument("--photo", type=Path, help="photo for e2e (default: scikit-image's coffee)")
    p.add_argument("--runs", type=positive_int, default=60, help="timed rounds (60)")
    p.add_argument("--warmup", type=positive_int, default=5, help="untimed runs per candidate first (5)")
    p.add_argument("--settle", type=int, default=1,
                   help="untimed calls before each timed one in a round (1): lets the previous "
                        "candidate's spinning worker threads go idle (matters on few cores)")
    p.add_argument("--baseline", help="label prefix of the baseline (default: first torch, else first)")
    p.add_argument("--no-rss", action="store_true", help="skip peak-RSS measurement (a process each)")
    p.add_argument("--quick", action="store_true", help="5 rounds, 1 warm-up: a smoke run")
    p.add_argument("--json", type=Path, help="write every figure and the machine here")
    p.add_argument("--plot", type=Path, help="write a PNG chart (needs matplotlib)")
    p.add_argument("--accuracy", type=Path, help="effnet-eval --json output, for the plot")
    p.add_argument("--version", action="version", version=f"effnet-bench {__version__}")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.warmup = 5, 1
    args.modes = [m for m in args.mode.split(",") if m]
    if args.modes in (["throughput"], ["service"]):
        if not args.models or args.torch or args.data is None or not args.data.is_dir():
            p.error(f"--mode {args.mode} needs model files and --data FOLDER of images (no --torch)")
        if args.modes == ["service"] and importlib.util.find_spec("uvicorn") is None:
            p.error("--mode service needs effnet-serve: pip install 'effnet-lite-edge[serve]'")
        check_model_files(p, args.models)
        check_output(p, args.json, "--json")
        return args
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data {args.data}: no such folder")
    if not args.modes or any(m not in ("invoke", "e2e") for m in args.modes):
        p.error("--mode takes invoke and/or e2e, or throughput or service alone")
    if not args.models and not args.torch:
        p.error("give model files and/or --torch VARIANTS")
    check_model_files(p, args.models)
    args.torch_variants = variant_list(
        p, args.torch, "--torch", args.torch_random_init,
        "add --torch-random-init to time it untrained (latency does not depend on the weights)")
    check_output(p, args.json, "--json")
    check_output(p, args.plot, "--plot")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib: pip install 'effnet-lite-edge[bench]'")
    args.accuracy_report = (read_json_report(p, args.accuracy, "--accuracy", "results")
                            if args.accuracy else None)
    args.source = None
    if "e2e" in args.modes:
        try:
            args.source = source_photo(args.photo)
        except ImageError as e:
            p.error(f"--photo {e}")
    return args


def timed_rounds(tasks: dict, runs: int, warmup: int, desc: str, settle: int = 1) -> dict[str, list]:
    """Run every task `warmup` times, then `runs` rounds: in each round every task runs
    `settle` untimed calls and one timed call, task after task (round-robin)."""
    for fn in tasks.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in tasks}
    with Progress(runs, desc) as bar:
        for _ in range(runs):
            for name, fn in tasks.items():
                for _ in range(settle):
                    fn()
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
            bar.update()
    return times


def run(args) -> dict:
    cands = file_candidates(args.models, args.threads,
                            args.backends.split(",") if args.backends else
                            (list(BACKENDS) if args.all_backends else None))
    cands += torch_candidates(args.torch_variants, args.threads, args.torch_random_init)
    if not cands:
        raise ModelError("no candidate can run here (no backend installed for these files?)")
    for c in cands:
        print(f"loading {c.label} ({c.threads} thread{'s' * (c.threads > 1)})", file=sys.stderr)
        c.load()
    baseline = next((c for c in cands if args.baseline and c.label.startswith(args.baseline)),
                    next((c for c in cands if c.kind == "torch"), cands[0]))
    key = {id(c): f"{c.label} x{c.threads}" for c in cands}
    report = {"machine": machine_info(), "config": {"runs": args.runs, "warmup": args.warmup,
                                                    "threads": args.threads, "modes": args.modes},
              "baseline": key[id(baseline)], "candidates": []}
    rows = {key[id(c)]: {"label": c.label, "kind": c.kind, "backend": c.backend, "threads": c.threads,
                         "variant": c.variant, "precision": c.precision, "load_ms": c.load_ms,
                         "size_bytes": c.size_bytes, "path": str(c.path or "")} for c in cands}
    if "invoke" in args.modes:
        times = timed_rounds({key[id(c)]: c.invoke for c in cands}, args.runs, args.warmup,
                             "invoke", args.settle)
        for name, t in times.items():
            rows[name]["invoke"] = summarize(t)
            rows[name]["invoke"]["speedup_vs_baseline"] = median_ratio(times[report["baseline"]], t)
            rows[name]["invoke"]["samples_ms"] = [round(x * 1e3, 4) for x in t]
    if "e2e" in args.modes:
        jpegs = make_jpegs(args.source)
        tasks = {}
        for size, jpeg in jpegs.items():
            tasks[("decode", size)] = (lambda j=jpeg: decode(j))
            for c in cands:
                tasks[(key[id(c)], size)] = (lambda c=c, j=jpeg: c.end_to_end(j))
        # at Lite0's resize target (341x256) the 12 MP photo decodes at 1/8 scale
        lite0 = PreprocessConfig.for_variant(get_variant("lite0")).resized_dims(*SIZES["12MP"])
        tasks[("decode", DRAFT_12MP)] = (lambda j=jpegs["12MP"]: decode_draft(j, lite0))
        times = timed_rounds(tasks, args.runs, max(1, args.warmup // 2), "end to end", args.settle)
        report["jpeg_decode"] = {size: summarize(times[("decode", size)]) for size in [*jpegs, DRAFT_12MP]}
        report["jpeg_bytes"] = {size: len(j) for size, j in jpegs.items()}
        for c in cands:
            name = key[id(c)]
            rows[name]["e2e"] = {size: summarize(times[(name, size)]) for size in jpegs}
            rows[name]["e2e"]["12MP_over_640x480"] = median_ratio(times[(name, "12MP")], times[(name, "640x480")])
            rows[name]["e2e"]["speedup_vs_baseline_640x480"] = median_ratio(
                times[(report["baseline"], "640x480")], times[(name, "640x480")])
            if "invoke" in args.modes:   # rounds pair up: same index, same moment
                inv = np.asarray(rows[name]["invoke"]["samples_ms"]) / 1e3
                rows[name]["e2e"].update(vga_and_12mp_ratios(
                    inv, times[("decode", "640x480")], times[("decode", DRAFT_12MP)],
                    times[(name, "640x480")]))
    if not args.no_rss:
        for c in cands:
            rows[key[id(c)]]["peak_rss_mb"] = peak_rss_mb(c)
    report["candidates"] = list(rows.values())
    for name, row in rows.items():
        row["name"] = name
    report["checks"] = checks(report)
    report["agreement_photos"] = add_agreement(report["candidates"], args.data) if args.data else 0
    report["recommendation"] = recommend(report["candidates"])
    return report


VGA_TARGET = 1.3   # e2e 640x480 <= 1.3 x (invoke + plain decode)


def vga_and_12mp_ratios(invoke, decode_vga, decode_12mp_draft, e2e_vga) -> dict:
    """Per-round median ratios behind the two end-to-end targets (all series in seconds,
    one value per round):
    - 640x480 end to end over invoke + its plain decode;
    - the floor of "12 MP / 640x480": the 12 MP photo's 1/8-scale decode plus invoke (what
      any pipeline pays) over this run's 640x480 end to end;
    - that floor if 640x480 took exactly its target, 1.3 x (invoke + decode): above 3, no
      pipeline can meet both targets with this decoder, model and thread count."""
    inv, d_vga, d_12 = (np.asarray(a, np.float64) for a in (invoke, decode_vga, decode_12mp_draft))
    return {"640x480_over_invoke_plus_decode": median_ratio(e2e_vga, inv + d_vga),
            "12MP_floor_over_640x480": median_ratio(inv + d_12, e2e_vga),
            "12MP_floor_if_640x480_on_target": median_ratio(inv + d_12, VGA_TARGET * (inv + d_vga))}


def checks(report) -> list[dict]:
    """The project's speed targets, read off this run's own figures."""
    out = []
    rows = report["candidates"]

    def find(**kw):
        return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]

    def ratio_of(slow, fast):    # per-round ratios, median (rounds ran back to back)
        return median_ratio(slow["invoke"]["samples_ms"], fast["invoke"]["samples_ms"])

    for r in rows:
        if r["kind"] != "file" or r["precision"] != "int8" or "invoke" not in r:
            continue
        torch = find(kind="torch", variant=r["variant"], threads=r["threads"])
        if torch and r["threads"] == 1 and r["path"].endswith(".tflite"):
            ratio = ratio_of(torch[0], r)
            out.append({"check": f"{r['name']} vs PyTorch eager fp32 (1 thread)", "ratio": ratio,
                        "target": ">= 4.5x faster", "ok": ratio >= 4.5})
        fp32 = [f for f in find(kind="file", variant=r["variant"], threads=r["threads"],
                                backend=r["backend"], precision="fp32") if "invoke" in f]
        if fp32:
            ratio = ratio_of(fp32[0], r)
            out.append({"check": f"{r['name']}: int8 vs fp32 on {r['backend']}", "ratio": ratio,
                        "target": "> 1x (int8 faster)", "ok": ratio > 1})
        e2e = r.get("e2e", {})
        if "640x480_over_invoke_plus_decode" in e2e:
            ratio = e2e["640x480_over_invoke_plus_decode"]
            out.append({"check": f"{r['name']}: e2e 640x480 / (invoke + decode)", "ratio": ratio,
                        "target": f"<= {VGA_TARGET}", "ok": ratio <= VGA_TARGET})
        if "12MP_over_640x480" in e2e:
            ratio = e2e["12MP_over_640x480"]
            row = {"check": f"{r['name']}: e2e 12MP / e2e 640x480", "ratio": ratio,
                   "target": "<= 3", "ok": ratio <= 3}
            if "12MP_floor_over_640x480" in e2e:
                row["floor"] = e2e["12MP_floor_over_640x480"]
                row["floor_if_640x480_on_target"] = e2e["12MP_floor_if_640x480_on_target"]
            out.append(row)
    return out


def print_report(report) -> None:
    m = report["machine"]
    print(f"machine: {m['cpu']}, int8 class {m.get('cpu_int8_class', '?')} ({m['cores']} cores), Python {m['python']}; "
          f"{report['config']['runs']} interleaved rounds; baseline: {report['baseline']}")
    rows = report["candidates"]
    if any("invoke" in r for r in rows):
        print("\ninvoke (prepared input tensor)")
        print(f"{'candidate':<44} {'thr':>3} {'load ms':>8} {'median':>8} {'p90':>8} {'p99':>8} "
              f"{'mean':>8} {'min':>8} {'img/s':>7} {'speedup':>8} {'MB':>6} {'RSS MB':>7}")
        for r in rows:
            s = r["invoke"]
            rss = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-"
            print(f"{r['label']:<44} {r['threads']:>3} {r['load_ms']:>8.0f} {s['median_ms']:>8.2f} "
                  f"{s['p90_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['mean_ms']:>8.2f} {s['min_ms']:>8.2f} "
                  f"{s['throughput_per_s']:>7.1f} {s['speedup_vs_baseline']:>7.2f}x "
                  f"{r['size_bytes'] / 1e6:>6.1f} {rss:>7}")
    if any("e2e" in r for r in rows):
        sizes = list(SIZES)
        dec = report["jpeg_decode"]
        print("\nend to end: JPEG bytes -> top-5 (median ms; plain JPEG decode: "
              + ", ".join(f"{s} {dec[s]['median_ms']:.2f}" for s in sizes)
              + f"; 12MP at 1/8 DCT scale {dec[DRAFT_12MP]['median_ms']:.2f})")
        print(f"{'candidate':<44} {'thr':>3} " + " ".join(f"{s:>9}" for s in sizes)
              + f" {'e2e/(inv+dec)':>13} {'12MP/VGA':>9} {'speedup':>8}")
        for r in rows:
            e = r["e2e"]
            ratio = e.get("640x480_over_invoke_plus_decode")
            ratio_text = f"{ratio:>13.2f}" if ratio is not None else f"{'-':>13}"  # needs --mode invoke too
            print(f"{r['label']:<44} {r['threads']:>3} " + " ".join(f"{e[s]['median_ms']:>9.2f}" for s in sizes)
                  + f" {ratio_text} {e['12MP_over_640x480']:>9.2f} {e['speedup_vs_baseline_640x480']:>7.2f}x")
    if report["checks"]:
        print("\ntargets (ratios measured in this run)")
        for c in report["checks"]:
            floor = (f"; floor {c['floor']:.2f}: the 12MP JPEG's 1/8-scale decode + invoke alone;"
                     f" {c['floor_if_640x480_on_target']:.2f} if 640x480 met its target"
                     if "floor" in c else "")
            print(f"  [{'ok' if c['ok'] else 'MISSED'}] {c['check']}: {c['ratio']:.2f} (target {c['target']}{floor})")
    if report.get("recommendation"):
        print(format_advice(report["recommendation"], report["agreement_photos"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.modes == ["throughput"]:
        from .throughput import main_from_args
        return main_from_args(args)
    if args.modes == ["service"]:
        from .service import main_from_args
        return main_from_args(args)
    try:
        report = run(args)
    except (ModelError, BackendUnavailableError) as e:
        print(f"effnet-bench: error: {e}", file=sys.stderr)
        return 2
    print_report(report)
    written = True
    if args.json:
        written = write_text(args.json, json.dumps(report, indent=2), "effnet-bench")
        if written:
            print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        from .plot import plot_report
        try:
            plot_report(report, args.plot, args.accuracy_report)
            print(f"wrote {args.plot}", file=sys.stderr)
        except OSError as e:
            print(f"effnet-bench: error: cannot write {args.plot}: {e.strerror or e}", file=sys.stderr)
            written = False
    return 0 if written else 2


if __name__ == "__main__":
    sys.exit(main())
