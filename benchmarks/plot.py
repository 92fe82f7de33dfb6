"""Charts for an effnet-bench report (matplotlib, from the `bench` extra)."""
from __future__ import annotations

from pathlib import Path


def plot_report(report: dict, path: Path, accuracy: dict | None = None) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("effnet-bench: --plot needs matplotlib: pip install 'effnet-lite-edge[bench]'")
    rows = [r for r in report["candidates"] if "invoke" in r]
    panels = 2 if accuracy else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, min(0.2 * len(rows) + 2, 12)),
                             squeeze=False, gridspec_kw={"width_ratios": [1.3, 1][:panels]})
    ax = axes[0][0]
    labels = [f"{r['label']} x{r['threads']}" for r in rows]
    med = [r["invoke"]["median_ms"] for r in rows]
    p90 = [r["invoke"]["p90_ms"] - r["invoke"]["median_ms"] for r in rows]
    colors = ["tab:red" if r["kind"] == "torch" else "tab:blue" if r["precision"] == "int8" else "tab:gray"
              for r in rows]
    ax.barh(range(len(rows)), med, xerr=[[0] * len(rows), p90], color=colors, capsize=3)
    ax.set_yticks(range(len(rows)), labels, fontsize=6 if len(rows) > 24 else 8)
    ax.invert_yaxis()
    ax.set_xlabel("invoke latency, ms (median; whisker to p90)")
    ax.set_title("Latency per candidate (blue int8, grey fp32, red PyTorch eager)", fontsize=9)
    if accuracy:
        ax2 = axes[0][1]
        top1 = {r["model"]: r["top1"] for r in accuracy["results"]}
        for prec, marker in (("int8", "o"), ("fp32", "s")):
            pts = [(r["invoke"]["median_ms"], top1[Path(r["path"]).name], r["variant"]) for r in rows
                   if r["kind"] == "file" and r["precision"] == prec and r["threads"] == 1
                   and r["path"].endswith(".tflite") and Path(r["path"]).name in top1]
            pts.sort()
            if pts:
                ax2.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker=marker, label=f"{prec} TFLite")
                for x, y, v in pts:
                    ax2.annotate(v, (x, 100 * y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax2.set_xlabel("invoke latency, ms (1 thread)")
        ax2.set_ylabel(f"top-1 % on {accuracy.get('images', '?')} photos")
        ax2.set_title("Latency vs accuracy", fontsize=9)
        ax2.legend(fontsize=8)
        ax2.grid(alpha=0.3)
    m = report["machine"]
    fig.suptitle(f"effnet-bench on {m['cpu']}, {m['cores']} cores", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
