"""Bar plot of the main score per task, one bar per evaluated model (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kalm.store import atomic_path


def plot_scores(scores: dict[str, dict[str, Any]], path: Path, title: str = "mteb main scores") -> Path:
    """Write ``path`` (PNG): tasks on the x axis plus the average, a bar per model, values printed."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and a worker must never need one
    import matplotlib.pyplot as plt

    models = [m for m, s in scores.items() if s and s.get("tasks")]
    tasks = sorted({t for m in models for t in scores[m]["tasks"]})
    groups = tasks + ["average"]
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + len(groups) * (0.5 + 0.45 * len(models))), 4.2))
    for i, m in enumerate(models):
        vals = [scores[m]["tasks"].get(t) for t in tasks] + [scores[m].get("average")]
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar([x for x, v in zip(xs, vals) if v is not None], [v for v in vals if v is not None], width,
                      label=m)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=1)
    ax.set_xticks(range(len(groups)), [g.replace("Classification", "Cls") for g in groups], fontsize=8,
                  rotation=15 if len(groups) > 4 else 0)
    ax.set_ylabel("main score (0-1)")
    ax.set_ylim(0, 1.15)  # headroom for the legend above the bars
    ax.set_title(title, fontsize=10)
    if models:
        ax.legend(fontsize=8, loc="upper center", ncol=min(len(models), 4), frameon=False)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
