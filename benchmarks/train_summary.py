"""train_study's results files pooled: each mode over every sample they hold.

    python -m effnet_lite.benchmarks.train_summary RESULTS.json [RESULTS.json ...] [--exclude SET,...]
        [--modes MODE,...] [--json OUT]

One sample is a set, a seed and its 500-odd new photos; on one sample a mode's figure moves by
a point or two with which photos are close calls, so what a mode buys is read over many. Per
variant and candidate:
- against the linear probe of the same sample (int8 file's top-1 minus the probe's, points):
  the mean, the lowest and highest, how many samples are 2 points or more above it, and how many
  below it; and the mean by set (each set's samples averaged first: samples of one set share its
  classes and photos, so the sets are the independent units) with its 95 % interval (Student's t
  over the sets' means), which says whether a mode is above the probe beyond the noise; and,
  where the rows count the photos only one of the two answers right (train_study's vs_probe),
  how many samples are below or above the probe beyond their own paired noise (|b - c| over
  1.96 sqrt(b + c));
- the int8 files against their fp32 models, pooled over every new photo: the difference in
  top-1 (points) with its 95 % interval (a paired one: only the photos the two answer
  differently can move it), and the share of photos answered differently; and sample by
  sample, how many differ by more than half a point, and how many differ beyond their own 95 %
  noise (int8 worse / better: |b - c| over 1.96 sqrt(photos answered differently), a bound on
  the paired noise that is never too narrow);
- how many of the reports' estimates held the int8 file's figure on the new photos within their
  95 % interval, and how many erred low (the new photos did better) or high.
A sample run twice (the same set, seed, variant and sizes in two files) counts once, the first
file's. Pool only files of the same trainer, CPU class and purpose: the figures are theirs; and
--exclude the sets that chose a mode's settings, for a figure that nothing chose on. --modes
keeps only the modes named (default, fine-tune, fine-tune-if-better, ensemble): a file's rows of a
mode the trainer has changed since are left out that way.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

PROBE = "linear probe"       # how train_study's probe rows are named (older files: this name alone)
MODES = ("default", "fine-tune", "fine-tune-if-better", "ensemble")     # as mode() reads train_study's names


def mode(candidate: str) -> str | None:
    """The trainer's mode a row's candidate names ("effnet-train --ensemble": ensemble), or None
    for the probe."""
    if candidate.startswith(PROBE):
        return None
    return "default" if candidate.endswith("(default)") else candidate.split(" --", 1)[-1]


def samples(files: list[Path], exclude=(), modes=None) -> tuple[list[dict], list[str]]:
    """Every row of the files but the `exclude` sets' (and, given `modes`, but other modes'), each
    (sample, candidate) once; and the CPU classes they name."""
    rows, seen, classes = [], set(), []
    for f in files:
        try:
            data = json.loads(f.read_text())
            found = [(_sample(r) + (r["candidate"],), r) for r in data["rows"]]
            cls = str((data.get("machine") or {}).get("cpu_int8_class", "unknown"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SystemExit(f"{f}: not a train_study results file ({e.__class__.__name__}: {e})") from None
        if cls not in classes:
            classes.append(cls)
        for key, r in found:
            kept = modes is None or mode(r["candidate"]) in (None, *modes)
            if key not in seen and r["set"] not in exclude and kept:
                seen.add(key)
                rows.append(r)
    return rows, classes


# Student's t, 97.5th percentile, by degrees of freedom (a two-sided 95 % interval); 1.96 beyond
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: int) -> float:
    """The table's value at the largest tabulated df not above `df` (so never narrower)."""
    return T975[max(k for k in T975 if k <= df)] if df <= 120 else 1.96


def by_set(over: list[tuple[str, float]]) -> tuple[float | None, float | None]:
    """(the mean over sets of each set's mean difference, its 95 % half-width or None under 2 sets)."""
    sets: dict[str, list[float]] = {}
    for name, v in over:
        sets.setdefault(name, []).append(v)
    means = [sum(v) / len(v) for v in sets.values()]
    if not means:
        return None, None
    mean = sum(means) / len(means)
    if len(means) < 2:
        return mean, None
    sd = math.sqrt(sum((m - mean) ** 2 for m in means) / (len(means) - 1))
    return mean, t975(len(means) - 1) * sd / math.sqrt(len(means))


def half_width_95(discordant: int) -> float:
    """The 95 % half-width, in photos, of a paired difference b - c whose b + c is at most
    `discordant` (the photos only one of two classifiers answers right): 1.96 sqrt(b + c)."""
    return 1.96 * math.sqrt(discordant)


def beyond_noise(b: int, c: int) -> str | None:
    """A sample against the probe from its discordant photos (b: only ours right, c: only the
    probe's): "above" or "below" when |b - c| exceeds 1.96 sqrt(b + c), McNemar's normal
    approximation, else None."""
    if abs(b - c) <= half_width_95(b + c):
        return None
    return "above" if b > c else "below"


def int8_gained(r: dict) -> int:
    """Photos the int8 file answers right beyond its fp32 model's, b - c (negative: fewer)."""
    return round((r["int8"] - r["fp32"]) * r["test"])


def answered_differently(r: dict) -> int:
    """Photos the int8 file and its fp32 model answer differently (at least b + c)."""
    return round((1 - r["same_answers"]) * r["test"])


def int8_apart(r: dict) -> tuple[bool, str | None]:
    """One sample's int8 file against its fp32 model: (more than half a point apart, "worse" or
    "better" when beyond the paired noise, else None)."""
    n = r["test"]
    gained, differ = int8_gained(r), answered_differently(r)
    beyond = abs(gained) > half_width_95(differ)
    return 100 * abs(gained) / n > 0.5 + 1e-9, ("worse" if gained < 0 else "better") if beyond else None


def _sample(r: dict) -> tuple:
    return r["set"], r["seed"], r.get("variant", "lite0"), r["train"], r["test"]


def pooled(rows: list[dict]) -> list[dict]:
    """One dict per (variant, candidate) other than the probe, in the order first met."""
    probes = {_sample(r): r["fp32"] for r in rows if r["candidate"].startswith(PROBE)}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if not r["candidate"].startswith(PROBE) and r.get("int8") is not None:
            groups.setdefault((r.get("variant", "lite0"), r["candidate"]), []).append(r)
    out = []
    for (variant, candidate), group in groups.items():
        over_by_set = [(r["set"], 100 * (r["int8"] - probes[_sample(r)])) for r in group if _sample(r) in probes]
        over = [v for _, v in over_by_set]
        set_mean, set_95 = by_set(over_by_set)
        photos = sum(r["test"] for r in group)
        gained = sum(int8_gained(r) for r in group)
        told = [r for r in group if r.get("same_answers") is not None]
        differ = sum(answered_differently(r) for r in told)
        told_photos = sum(r["test"] for r in told)
        apart = [int8_apart(r) for r in told]
        paired = [beyond_noise(r["vs_probe"]["only_ours_right"], r["vs_probe"]["only_probe_right"])
                  for r in group if r.get("vs_probe") and _sample(r) in probes]
        held = [r for r in group if r.get("reported_interval")]
        low = sum(r["int8"] > r["reported_interval"][1] for r in held)       # the estimate erred low
        high = sum(r["int8"] < r["reported_interval"][0] for r in held)
        row = {"variant": variant, "candidate": candidate, "samples": len(group),
               "sets": len({r["set"] for r in group}),
               "over_probe_mean": sum(over) / len(over) if over else None,
               "over_probe_min": min(over, default=None), "over_probe_max": max(over, default=None),
               "at_least_2_over": sum(v >= 2 - 1e-9 for v in over), "below_probe": sum(v < -1e-9 for v in over),
               "over_probe_by_set": set_mean, "over_probe_by_set_95": set_95,
               "probe_paired_samples": len(paired), "below_probe_beyond_noise": paired.count("below"),
               "above_probe_beyond_noise": paired.count("above"),
               "photos": photos, "int8_minus_fp32": 100 * gained / photos,
               "answered_differently": differ / told_photos if told_photos else None,
               "int8_samples_told": len(told), "int8_over_half_point": sum(a[0] for a in apart),
               "int8_worse_beyond_noise": sum(a[1] == "worse" for a in apart),
               "int8_better_beyond_noise": sum(a[1] == "better" for a in apart),
               "estimates_inside": len(held) - low - high, "estimates_low": low, "estimates_high": high,
               "estimates_with_interval": len(held)}
        if told_photos == photos:
            # paired: b photos right only in int8, c only in fp32, b + c <= differ; the difference
            # (b - c) / n has a standard error of at most sqrt(b + c) / n
            row["int8_minus_fp32_95"] = 100 * half_width_95(differ) / photos
        out.append(row)
    return out


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def show(table: list[dict]) -> None:
    """The pooled figures as a table on stdout."""
    print(f"{'variant':<7} {'candidate':<34} {'samples':>7} {'vs probe: mean':>14} {'by set, 95 %':>14} {'min':>6} "
          f"{'max':>6} {'>= +2':>5} {'below':>5} {'int8-fp32':>9} {'95 %':>6} {'differ':>6} {'int8 apart':>18} "
          f"{'estimates held':>22}")
    for t in table:
        held = "-" if not t["estimates_with_interval"] else \
            f"{t['estimates_inside']}/{t['estimates_with_interval']} ({t['estimates_low']} low, {t['estimates_high']} high)"
        differ = _num(None if t["answered_differently"] is None else 100 * t["answered_differently"], ".1f")
        apart = f"{t['int8_over_half_point']}/{t['int8_samples_told']}, {t['int8_worse_beyond_noise']} w " \
                f"{t['int8_better_beyond_noise']} b"
        set_cell = "-" if t["over_probe_by_set"] is None else \
            _num(t["over_probe_by_set"], "+.1f") + ("" if t["over_probe_by_set_95"] is None
                                                    else " ± " + _num(t["over_probe_by_set_95"], ".1f"))
        print(f"{t['variant']:<7} {t['candidate'][:34]:<34} {t['samples']:>7} {_num(t['over_probe_mean'], '+.2f'):>14} "
              f"{set_cell:>14} {_num(t['over_probe_min'], '+.1f'):>6} {_num(t['over_probe_max'], '+.1f'):>6} "
              f"{t['at_least_2_over']:>5} {t['below_probe']:>5} {t['int8_minus_fp32']:>+9.2f} "
              f"{_num(t.get('int8_minus_fp32_95'), '.2f'):>6} {differ:>5}% {apart:>18} {held:>22}")
        if t["probe_paired_samples"]:
            print(f"{'':<7} {'':<34} against the probe, beyond each sample's paired noise: "
                  f"{t['below_probe_beyond_noise']} below, {t['above_probe_beyond_noise']} above, "
                  f"of {t['probe_paired_samples']} samples with the photos counted")
    print("(vs probe: the int8 file's top-1 minus the probe's, points; by set: the sets' means averaged, with "
          "a 95 % half-width over the sets; int8-fp32: pooled over every new photo, "
          "with its 95 % half-width; differ: photos the two answered differently; int8 apart: samples more than "
          "half a point from fp32 / samples, and those beyond their own 95 % noise, int8 worse (w) or better (b))")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="train_summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, nargs="+", help="train_study --json files")
    p.add_argument("--exclude", default="", help="comma-separated sets left out (those that chose settings)")
    p.add_argument("--modes", help="comma-separated modes kept (default: every one): " + ", ".join(MODES))
    p.add_argument("--json", type=Path, help="also write the pooled figures here")
    args = p.parse_args(argv)
    exclude = [s for s in args.exclude.split(",") if s]
    modes = None if args.modes is None else [m.strip() for m in args.modes.split(",") if m.strip()]
    if modes is not None and (not modes or set(modes) - set(MODES)):
        p.error(f"--modes: one or more of {', '.join(MODES)}")
    rows, classes = samples(args.results, exclude, modes)
    try:
        table = pooled(rows)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise SystemExit(f"train_summary: a row of these files is not train_study's ({e.__class__.__name__}: {e})") from None
    if not table:
        print("train_summary: no effnet-train rows with an int8 figure in these files", file=sys.stderr)
        return 1
    print(f"{len({_sample(r) for r in rows})} samples from {len(args.results)} file(s)"
          + (f" (left out: {', '.join(exclude)})" if exclude else "")
          + (f" (modes: {', '.join(modes)})" if modes else "") + f"; int8 class: {', '.join(classes)}")
    show(table)
    if args.json:
        args.json.write_text(json.dumps({"files": [str(f) for f in args.results], "excluded": exclude, "modes": modes,
                                         "int8_classes": classes, "pooled": table}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
