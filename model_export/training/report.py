"""What a user needs before deploying a trained model: accuracy of every file it will ship,
what accuracy to expect on new photos (from photos that chose nothing), per-class precision
and recall, the confusion matrix, the photos it got wrong, where the time went, and how
accuracy trades against coverage over a score threshold (for `--threshold`: "none of these")."""
from __future__ import annotations

from pathlib import Path

import numpy as np

THRESHOLDS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SCALED = {"feature": "each by its own spread", "shared": "by one shared spread"}     # head.SCALINGS
PAIR = "both networks, averaged"       # report.json's mode.kept after --ensemble
HEAD = "frozen head"                   # ... by default (a linear head on the network's frozen layers)


def per_class(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> list[dict]:
    out = []
    for c, name in enumerate(classes):
        tp = int(np.sum((pred == c) & (y == c)))
        predicted, actual = int(np.sum(pred == c)), int(np.sum(y == c))
        out.append({"class": name, "photos": actual, "precision": tp / predicted if predicted else None,
                    "recall": tp / actual if actual else None})
    return out


def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> list[list[int]]:
    m = np.zeros((n, n), int)
    np.add.at(m, (y, pred), 1)
    return m.tolist()


def coverage_table(y: np.ndarray, pred: np.ndarray, score: np.ndarray) -> list[dict]:
    rows = []
    for t in THRESHOLDS:
        kept = score >= t
        rows.append({"threshold": t, "coverage": float(kept.mean()) if len(kept) else 0.0,
                     "accuracy": float((pred[kept] == y[kept]).mean()) if kept.any() else None})
    return rows


def evaluation(name: str, y: np.ndarray, probs: np.ndarray, classes: list[str], paths: list) -> dict:
    pred, score = probs.argmax(1), probs.max(1)
    wrong = [{"photo": str(paths[i]), "true": classes[y[i]], "predicted": classes[pred[i]],
              "score": round(float(score[i]), 4)} for i in np.flatnonzero(pred != y)]
    return {"name": name, "photos": int(len(y)), "top1": float((pred == y).mean()) if len(y) else None,
            "per_class": per_class(y, pred, classes), "confusion": confusion(y, pred, len(classes)),
            "coverage": coverage_table(y, pred, score), "misclassified": wrong}


def _pct(v) -> str:
    return "   -  " if v is None else f"{100 * v:5.1f}%"


MATRIX_MAX = 30        # classes: above this, the most-confused pairs instead of the whole matrix


def confused_pairs(classes: list[str], matrix: list[list[int]], most: int = 15) -> list[tuple[str, str, int]]:
    m = np.asarray(matrix)
    pairs = [(classes[i], classes[j], int(m[i, j])) for i in range(len(m)) for j in range(len(m)) if i != j and m[i, j]]
    return sorted(pairs, key=lambda p: -p[2])[:most]


def headline(report: dict) -> list[str]:
    h, est = report["headline"], report["estimate"]
    lo, hi = h["interval"]
    p = report["photos"]
    lines = [f"effnet-train: {report['variant']}, {len(report['classes'])} classes, {p['used']} photos "
             f"(of {p['files']} files){', ' + str(p['test']) + ' test photos' if p['test'] else ''}", "",
             f"expected top-1 on new photos: {100 * h['top1']:.1f} %   (95 % interval {100 * lo:.1f}-{100 * hi:.1f} %, "
             f"{h['photos']} photos)", f"  from: {h['what']}"]
    if h["source"] == "estimate":
        lines.append(f"  each photo was answered by a model whose training and whose choice of settings never saw "
                     f"it; the model you deploy was then trained on all {p['used']} photos")
    else:
        lo, hi = est["interval"]
        lines.append(f"  ({est['name']}: {100 * est['top1']:.1f} %, 95 % interval {100 * lo:.1f}-{100 * hi:.1f} %)")
    return lines


def honest_answers(report: dict) -> dict:
    """The answers every table and picture is made from: the int8 file's on the test photos,
    else the estimate's (photos that chose nothing, either way)."""
    return report["test"]["tflite"] if report["test"] else report["estimate"]


def for_scale(report: dict) -> list[str]:
    """What the headline's figure compares with: the largest class's share of the same photos
    (what answering it always would score) and the classes' mean recall; and where the head
    leans to large classes, the option that weighs them back."""
    main = honest_answers(report)
    rows = [r for r in main["per_class"] if r["photos"]]
    if not rows:
        return []
    largest = max(rows, key=lambda r: r["photos"])
    total = sum(r["photos"] for r in rows)
    lines = [f"  for scale: answering {largest['class']!r} (the largest class) every time would score "
             f"{100 * largest['photos'] / total:.1f} %; the classes' mean recall is "
             f"{100 * np.mean([r['recall'] for r in rows]):.1f} %"]
    low = [r["class"] for r in rows if r["recall"] < main["top1"] / 2]
    if low and report["config"].get("class_weights", "none") == "none" and largest["photos"] > 1.5 * total / len(rows):
        lines.append(f"  rarely recalled (under half the top-1): {', '.join(low[:5])}{', ...' if len(low) > 5 else ''}; "
                     "--class-weights balanced weighs each class by 1/its share (the loss then counts every class alike)")
    return lines


def files_rounding(report: dict) -> str:
    """How the run's int8 files were rounded (reports from before the choice: nearest)."""
    return report.get("rounding", "nearest")


def text(report: dict) -> str:
    """The report as a user reads it on stdout."""
    classes = report["classes"]
    lines = headline(report) + for_scale(report)
    lines += ["", f"the files (through this runtime; int8 weights by {files_rounding(report)} rounding):"]
    width = max(len(Path(f).name) for f in report["files"].values())
    for key, path in report["files"].items():
        a = report["agreement"][key]
        row = f"  {Path(path).name:<{width}}  same answer as the fp32 model on {a['agree']}/{a['photos']} training photos"
        if report["test"]:
            row += f", test top-1 {_pct(report['test'][key]['top1'])}"
        lines.append(row)
    c = report["chosen"]
    best = next(r for r in c["table"] if r["strength"] == c["l2_strength"])
    lines += ["", f"chosen by {c['by']}:",
              f"  L2 strength {c['l2_strength']:g} (cross-validated log-loss {best['cv_log_loss']:.3f}, "
              f"top-1 {100 * best['cv_top1']:.1f} %)"]
    if c.get("forms"):          # (reports before 2026-12-05 have no crop or scaling choice)
        lines.append(f"  centre crop {c['crop_pct']:.0%} of the photo (written into the files), features scaled "
                     f"{SCALED[c['scaling']]}; tried: " + ", ".join(
                         f"{r['crop_pct']:.0%} {r['scaling']} (log-loss {r['cv_log_loss']:.3f}, top-1 "
                         f"{100 * r['cv_top1']:.1f} %)" for r in c["forms"]))
    if c.get("frozen_head"):     # (earlier reports: the chosen head alone)
        lines.append("  the frozen head: this fit averaged with a linear probe's (centre crops, features unscaled, "
                     "L2 strength 1/photos), one layer" + ("; fine-tuning starts from this fit alone"
                                                         if c.get("fine_tuning_starts_from") else ""))
    if "views" in report:
        lines.append(f"  {report['views']} augmented view(s) of each photo, besides its centre crop"
                     + ("" if report["config"]["views"] else " (by the number of photos; --views to set)"))
    mode = report.get("mode", {})
    if "final" in mode:             # --fine-tune-if-better
        m = mode["final"]
        lines += ["", f"chosen on {m['photos']} held-out photos (these figures chose the mode: they are not an estimate):",
                  f"  {mode['kept']} deployed: the fine-tuned network answered {100 * m['tuned_top1']:.1f} % right "
                  f"(log-loss {m['tuned_log_loss']:.3f}), the frozen head {100 * m['head_top1']:.1f} % "
                  f"({m['head_log_loss']:.3f})"]
    elif mode.get("kept") == PAIR:     # --ensemble
        lines += ["", "deployed: both networks (the frozen head's and the fine-tuned one), their logits averaged: "
                      "twice the work per photo"]
    elif mode.get("kept") == HEAD:     # the default: say what the other modes offer (docs/train.md, "Which mode")
        lines += ["", "deployed: the frozen head (a linear head on the network's frozen layers): the smallest, fastest file",
                  "  --ensemble usually answers better, most of all on photos unlike ImageNet's: about 3-4x this "
                  "run's time, twice the work per photo (or --fine-tune-if-better, which keeps one network: this file's speed)"]
    main = honest_answers(report)
    what = "test photos" if report["test"] else "the estimate's answers"
    lines += ["", f"per class ({what}):", f"  {'class':<24} photos  precision  recall"]
    for row in main["per_class"]:
        lines.append(f"  {row['class'][:24]:<24} {row['photos']:>6}     {_pct(row['precision'])}  {_pct(row['recall'])}")
    if len(classes) <= MATRIX_MAX:
        width = max(4, *(len(c[:12]) for c in classes))
        lines += ["", "confusion matrix (rows: true class, columns: predicted):",
                  "  " + " " * width + " " + " ".join(f"{c[:width]:>{width}}" for c in classes)]
        for name, row in zip(classes, main["confusion"]):
            lines.append(f"  {name[:width]:>{width}} " + " ".join(f"{v:>{width}}" for v in row))
    else:
        lines += ["", "most confused (true class -> predicted, photos):"]
        lines += [f"  {a} -> {b}: {n}" for a, b, n in confused_pairs(classes, main["confusion"])]
    lines += ["", f"score threshold -> share of photos answered, accuracy on those ({what}):"]
    for row in main["coverage"]:
        lines.append(f"  --threshold {row['threshold']:<4}  answered {_pct(row['coverage'])}  accuracy {_pct(row['accuracy'])}")
    wrong = main["misclassified"]
    lines += ["", f"misclassified: {len(wrong)}" + (" (all in report.json)" if len(wrong) > 10 else "")]
    for w in wrong[:10]:
        lines.append(f"  {w['photo']}: {w['true']} taken for {w['predicted']} ({100 * w['score']:.0f}%)")
    lines += ["", "time: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items())]
    return "\n".join(lines)


def pictures(report: dict, folder: Path) -> list[Path]:
    """confusion.png (or, above MATRIX_MAX classes, the most-confused pairs) and coverage.png,
    from the headline's photos (matplotlib, from the train extra)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    classes = report["classes"]
    main = honest_answers(report)
    what = "test photos" if report["test"] else "cross-validated answers"
    out = []
    if len(classes) <= MATRIX_MAX:
        m = np.asarray(main["confusion"])
        fig, ax = plt.subplots(figsize=(2 + 0.6 * len(classes), 1.6 + 0.6 * len(classes)))
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true class")
    else:
        pairs = confused_pairs(classes, main["confusion"])
        fig, ax = plt.subplots(figsize=(7, 1 + 0.35 * max(len(pairs), 1)))
        ax.barh([f"{a} -> {b}" for a, b, _ in pairs][::-1], [n for *_, n in pairs][::-1])
        ax.set_xlabel("photos (true class -> predicted)")
    ax.set_title(f"confusion: {what}", fontsize=9)
    fig.tight_layout()
    out.append(folder / "confusion.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    cov = main["coverage"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([r["coverage"] * 100 for r in cov], [(r["accuracy"] or 0) * 100 for r in cov], marker="o")
    for r in cov:
        ax.annotate(f"{r['threshold']:g}", (r["coverage"] * 100, (r["accuracy"] or 0) * 100), fontsize=7)
    ax.set_xlabel("photos answered, % (score >= threshold)")
    ax.set_ylabel("accuracy on those, %")
    ax.set_title(f"--threshold: coverage against accuracy ({what})", fontsize=9)
    fig.tight_layout()
    out.append(folder / "coverage.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    return out
