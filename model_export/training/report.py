"""What a user needs before deploying a trained model: accuracy of every file it will ship,
per-class precision and recall, the confusion matrix, the photos it got wrong, the training
curves, where the time went, and how accuracy trades against coverage over a score
threshold (for `--threshold`: "none of these")."""
from __future__ import annotations

from pathlib import Path

import numpy as np

THRESHOLDS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


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


def text(report: dict) -> str:
    """The report as a user reads it on stdout."""
    ev, classes = report["evaluations"], report["classes"]
    main = ev[report["deployed"]]
    lines = [f"effnet-train: {report['variant']}, {len(classes)} classes, {report['photos']['train']} training "
             f"and {report['photos']['val']} validation photos",
             "", "validation top-1 (the first is what you deploy):"]
    order = [report["deployed"]] + [k for k in ev if k != report["deployed"]]
    width = max(len(ev[k]["name"]) for k in order)
    for key in order:
        e = ev[key]
        lines.append(f"  {e['name']:<{width}}  {_pct(e['top1'])}  ({e['photos']} photos)")
    lines += ["", f"per class ({main['name']}):", f"  {'class':<24} photos  precision  recall"]
    for row in main["per_class"]:
        lines.append(f"  {row['class'][:24]:<24} {row['photos']:>6}     {_pct(row['precision'])}  {_pct(row['recall'])}")
    width = max(4, *(len(c[:12]) for c in classes))
    lines += ["", "confusion matrix (rows: true class, columns: predicted):",
              "  " + " " * width + " " + " ".join(f"{c[:width]:>{width}}" for c in classes)]
    for name, row in zip(classes, main["confusion"]):
        lines.append(f"  {name[:width]:>{width}} " + " ".join(f"{v:>{width}}" for v in row))
    lines += ["", "score threshold -> share of photos answered, accuracy on those:"]
    for row in main["coverage"]:
        lines.append(f"  --threshold {row['threshold']:<4}  answered {_pct(row['coverage'])}  accuracy {_pct(row['accuracy'])}")
    wrong = main["misclassified"]
    lines += ["", f"misclassified: {len(wrong)}" + (" (all in report.json)" if len(wrong) > 10 else "")]
    for w in wrong[:10]:
        lines.append(f"  {w['photo']}: {w['true']} taken for {w['predicted']} ({100 * w['score']:.0f}%)")
    lines += ["", "time: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items())]
    return "\n".join(lines)


def pictures(report: dict, history: dict, folder: Path) -> list[Path]:
    """confusion.png, curves.png and coverage.png (matplotlib, from the train extra)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    classes, main = report["classes"], report["evaluations"][report["deployed"]]
    out = []
    m = np.asarray(main["confusion"])
    fig, ax = plt.subplots(figsize=(2 + 0.6 * len(classes), 1.6 + 0.6 * len(classes)))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class")
    ax.set_title(f"validation confusion matrix: {main['name']}", fontsize=9)
    fig.tight_layout()
    out.append(folder / "confusion.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(history["train_loss"]))
    a1.plot(x, history["train_loss"], label="training loss (label-smoothed)")
    a1.plot(x, history["val_loss"], label="validation loss")
    a2.plot(x, np.asarray(history["val_acc"]) * 100, color="tab:green")
    if history["best_epoch"] >= 0:
        a2.axvline(history["best_epoch"], color="grey", ls="--", lw=1, label="kept")
        a2.legend()
    changes = [i for i in range(1, len(history["phase"])) if history["phase"][i] != history["phase"][i - 1]]
    for a in (a1, a2):
        for i in changes:
            a.axvline(i, color="tab:red", lw=0.8)
        a.set_xlabel("epoch (head: full-batch steps; red line: fine-tuning starts)")
    a1.legend()
    a2.set_ylabel("validation top-1, %")
    fig.tight_layout()
    out.append(folder / "curves.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    cov = main["coverage"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([r["coverage"] * 100 for r in cov], [(r["accuracy"] or 0) * 100 for r in cov], marker="o")
    for r in cov:
        ax.annotate(f"{r['threshold']:g}", (r["coverage"] * 100, (r["accuracy"] or 0) * 100), fontsize=7)
    ax.set_xlabel("photos answered, % (score >= threshold)")
    ax.set_ylabel("accuracy on those, %")
    ax.set_title("--threshold: coverage against accuracy", fontsize=9)
    fig.tight_layout()
    out.append(folder / "coverage.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    return out
