"""Ablations: variants of one config that share every cached stage they have in common.

Each variant is the retrain flow with a few overrides; because stage cache keys are content
hashes of config + inputs, the variants reuse each other's generate/ingest/filter outputs and
only recompute what their overrides change. One comparison table (markdown, Prefect table
artifact, PNG) answers: does each KaLM lever move quality here?
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger

from flows.retrain import retrain
from kalm.config import load_config
from kalm.store import atomic_write_text

# name -> (overrides, what it tests)
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "filtered": ({}, "the full recipe: ranking-consistency filter, semi-homogeneous batches, hard negatives, personas"),
    "no-filter": ({"filter.enabled": False}, "trained without ranking-consistency filtering"),
    "random-batches": ({"train.sampler": "random"}, "random (mixed-task) batches"),
    "homogeneous-batches": ({"train.sampler": "homogeneous"}, "fully homogeneous (single-task) batches"),
    "no-persona-data": ({"generate.enabled": False}, "without persona-based synthetic data"),
    "no-hard-negatives": ({"train.num_hard_negatives": 0}, "in-batch negatives only"),
}


@flow(name="ablation", log_prints=True)
def ablation(config: str = "cpu-demo", variants: Optional[list[str]] = None,
             overrides: Optional[dict[str, Any]] = None, ablation_id: Optional[str] = None) -> dict[str, Any]:
    """Run each variant (default: all) and write the comparison table."""
    logger = get_run_logger()
    chosen = variants or list(VARIANTS)
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    cfg = load_config(config, overrides)
    ablation_id = ablation_id or time.strftime("ablation-%Y%m%d-%H%M%S")
    out_dir = Path(cfg.runs_dir).resolve() / ablation_id
    scores: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name in chosen:
        start = time.perf_counter()
        # Variants are experiments: they are scored against the current model but never promoted.
        summary = retrain(config=config, run_id=f"{ablation_id}-{name}",
                          overrides={**(overrides or {}), "evaluate.promote": False, **VARIANTS[name][0]})
        seconds[name] = time.perf_counter() - start
        if "base" not in scores and "base" in summary["scores"]:
            scores["base (no training)"] = summary["scores"]["base"]
        scores[name] = summary["scores"]["trained"]
        logger.info("%s: average %.4f (%.0f s)", name, scores[name]["average"], seconds[name])
    table = comparison_rows(scores)
    markdown = render(table, seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "ablation.md", markdown)
    plot(table, out_dir / "ablation.png")
    _publish(table, markdown)
    return {"ablation_id": ablation_id, "table": table, "markdown": str(out_dir / "ablation.md"),
            "seconds": seconds}


def comparison_rows(scores: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    tasks = sorted({t for s in scores.values() for t in s["tasks"]})
    rows = []
    for name, s in scores.items():
        row = {"variant": name, **{t: round(s["tasks"].get(t, float("nan")), 4) for t in tasks},
               "average": round(s["average"], 4)}
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], seconds: dict[str, float]) -> str:
    cols = list(rows[0])
    lines = ["# Ablation", "", "| " + " | ".join(cols) + " | time (s) |", "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        t = seconds.get(r["variant"])
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + f" | {t:.0f} |" if t is not None else
                     "| " + " | ".join(str(r[c]) for c in cols) + " | (shared) |")
    lines += ["", "Variants:", *[f"- **{k}**: {v[1]}" for k, v in VARIANTS.items()]]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [c for c in rows[0] if c != "variant"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics) * len(rows) / 3), 4))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar([m + i * width for m in range(len(metrics))], [r[c] for c in metrics], width, label=r["variant"])
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics)
    ax.set_ylabel("main score")
    lo = min(r[c] for r in rows for c in metrics)
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _publish(rows: list[dict[str, Any]], markdown: str) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(table=rows, key="ablation-table", description="ablation: main scores per variant")
    create_markdown_artifact(markdown=markdown, key="ablation-report", description="ablation report")


if __name__ == "__main__":
    ablation()
