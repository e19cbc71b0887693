"""Ablations: variants of one config, each run with several seeds, compared by paired intervals.

Each (variant, seed) is the retrain flow with the variant's overrides and the seed as data
and training seed; because stage cache keys are content hashes of config + inputs, runs share
every stage they have in common (all variants of one seed share generate and ingest; the
filter is shared by every variant that leaves it alone). One table (markdown, JSON, Prefect
artifacts, PNG with error bars) answers: does each KaLM lever move quality here, beyond the
seed-to-seed noise?
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import yaml
from prefect import flow, get_run_logger

from flows.retrain import in_domain_tasks, retrain
from kalm.ablation.stats import AVERAGE, render_markdown, seed_overrides, summarize, verdict
from kalm.config import load_config, preset_path
from kalm.store import atomic_write_json, atomic_write_text


@flow(name="ablation")
def ablation(config: str = "cpu-demo", variants: Optional[list[str]] = None,
             overrides: Optional[dict[str, Any]] = None, ablation_id: Optional[str] = None,
             seeds: Optional[list[int]] = None) -> dict[str, Any]:
    """Run each variant (default: the config's ``ablation.variants``) for each seed and write the comparison."""
    logger = get_run_logger()
    cfg = load_config(config, overrides)
    spec = cfg.ablation
    chosen = variants or list(spec.variants)
    unknown = [v for v in chosen if v not in spec.variants]
    if unknown:
        raise ValueError(f"unknown variants {unknown}: choose from {', '.join(spec.variants)}")
    # Differences need the reference on the same seeds; it runs first in each seed so every partial table pairs.
    chosen = [spec.reference, *[v for v in chosen if v != spec.reference]]
    seeds = list(seeds if seeds is not None else spec.seeds)
    if not seeds:
        raise ValueError("an ablation needs at least one seed")
    raw_datasets = _raw_datasets(config, overrides)
    ablation_id = ablation_id or time.strftime("ablation-%Y%m%d-%H%M%S")
    out_dir = Path(cfg.runs_dir).resolve() / ablation_id
    scores: dict[str, dict[int, dict[str, Any]]] = {}
    base: Optional[dict[str, Any]] = None
    seconds: dict[str, float] = {}
    for seed in seeds:
        for name in chosen:
            start = time.perf_counter()
            # Variants are experiments: scored against the current model but never promoted.
            run_overrides = {**(overrides or {}), **seed_overrides(raw_datasets, seed), "evaluate.promote": False,
                             **spec.variants[name].overrides}
            summary = retrain(config=config, run_id=f"{ablation_id}-{name}-s{seed}", overrides=run_overrides)
            seconds[f"{name}/s{seed}"] = time.perf_counter() - start
            if base is None and "base" in summary["scores"]:
                base = summary["scores"]["base"]
            scores.setdefault(name, {})[seed] = summary["scores"]["trained"]
            logger.info("%s seed %d: average %.4f (%.0f s)", name, seed, scores[name][seed]["average"],
                        seconds[f"{name}/s{seed}"])
            # Written after every run: an experiment of hours stopped part-way still has its table so far.
            table, markdown = _write(out_dir, cfg, chosen, seeds, base, scores, seconds)
    _publish(table, markdown)
    return {"ablation_id": ablation_id, "markdown": str(out_dir / "ablation.md"), "seconds": seconds,
            "average": {r["variant"]: r["scores"][AVERAGE].mean for r in table["rows"]},
            "verdicts": {r["variant"]: verdict(r["diff"][AVERAGE]) for r in table["rows"]}}


def _write(out_dir: Path, cfg, chosen: list[str], seeds: list[int], base: Optional[dict[str, Any]],
           scores: dict[str, dict[int, dict[str, Any]]], seconds: dict[str, float]) -> tuple[dict[str, Any], str]:
    """``ablation.md``, ``ablation.json`` and ``ablation.png`` of the runs finished so far (the
    reference's seeds first, so every row is paired from the start); returns the table and markdown."""
    spec = cfg.ablation
    table = summarize(scores, spec.reference, spec.confidence)
    zero_shot = sorted({t for s in scores[spec.reference].values() for t in s["tasks"]} - in_domain_tasks(cfg))
    labels = {n: spec.variants[n].description for n in chosen}
    done = sum(len(runs) for runs in scores.values())
    planned = len(chosen) * len(seeds)
    progress = "" if done == planned else f"Runs finished so far: {done} of {planned}.\n\n"
    markdown = "# Ablation\n\n" + progress + _base_line(base) + render_markdown(table, labels, zero_shot)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "ablation.md", markdown)
    atomic_write_json(out_dir / "ablation.json", {"reference": spec.reference, "seeds": seeds, "base": base,
                                                  "scores": scores, "zero_shot_tasks": zero_shot,
                                                  "seconds": seconds, "runs_finished": done})
    plot(table, out_dir / "ablation.png")
    return table, markdown


def _raw_datasets(config: str, overrides: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ingest datasets as written in the YAML (placeholders unresolved), so a seed override keeps them."""
    raw = yaml.safe_load(preset_path(config).read_text()) or {}
    if overrides and "ingest.datasets" in overrides:
        return list(overrides["ingest.datasets"])
    return list((raw.get("ingest") or {}).get("datasets") or [])


def _base_line(base: Optional[dict[str, Any]]) -> str:
    if not base:
        return ""
    tasks = ", ".join(f"{t} {v:.4f}" for t, v in sorted(base["tasks"].items()))
    return f"Base model (no training): average {base['average']:.4f} ({tasks}).\n\n"


def plot(table: dict[str, Any], path: Path) -> None:
    """Bars of each variant's mean per metric with the t-interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, rows = table["metrics"], table["rows"]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(metrics) * len(rows) / 3), 4))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        est = [r["scores"][m] for m in metrics]
        ax.bar([m + i * width for m in range(len(metrics))], [e.mean for e in est], width,
               yerr=[e.half_width for e in est], capsize=2, label=r["variant"])
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics, fontsize=7)
    ax.set_ylabel("main score")
    lo = min(r["scores"][m].low for r in rows for m in metrics)
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _publish(table: dict[str, Any], markdown: str) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = [{"variant": r["variant"], "seeds": len(r["seeds"]),
             **{m: round(r["scores"][m].mean, 4) for m in table["metrics"]},
             "diff_average": None if r["diff"][AVERAGE] is None else round(r["diff"][AVERAGE].mean, 4),
             "verdict": verdict(r["diff"][AVERAGE])} for r in table["rows"]]
    create_table_artifact(table=rows, key="ablation-table", description="ablation: mean main scores per variant")
    create_markdown_artifact(markdown=markdown, key="ablation-report", description="ablation report")


if __name__ == "__main__":
    ablation()
