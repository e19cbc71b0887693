"""Ablation statistics: each variant run with several seeds, means with 95 % intervals, and
each variant's *paired* difference from the reference recipe (same seed, same data draw).

Why paired: with 2-3 seeds the seed-to-seed spread of one variant is often larger than the
effect of a lever, but two variants trained on the same seed share that draw, so their
difference per seed varies much less. The interval is Student's t over seeds
(``mean ± t_{0.975, n-1} · sd / sqrt(n)``); a difference whose interval contains 0 is reported
as "no effect measured", never as a win.

Shapes: ``scores[variant][seed]`` is one ``{"tasks": {task: main score}, "average": x}`` summary
(mteb's 0-1 scale), as the evaluate stage returns for the trained model.

Example::

    table = summarize({"full": {0: s0, 1: s1, 2: s2}, "no-filter": {0: t0, 1: t1, 2: t2}}, reference="full")
    print(render_markdown(table))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

AVERAGE = "average"


@dataclass(frozen=True)
class Estimate:
    """Mean of ``n`` values with a two-sided ``confidence`` t-interval (``low``/``high`` = mean when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.4f}"
        return f"{self.mean:.4f} ± {self.half_width:.4f}"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and Student-t interval of ``values`` (NaNs dropped).

    Raises:
        ValueError: no finite value.
    """
    from scipy import stats

    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        raise ValueError("no finite values to summarise")
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return Estimate(mean, mean, mean, n)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def _metric(summary: Mapping[str, Any], metric: str) -> float:
    if metric == AVERAGE:
        return float(summary[AVERAGE])
    return float(summary["tasks"].get(metric, float("nan")))


def summarize(scores: Mapping[str, Mapping[int, Mapping[str, Any]]], reference: str,
              confidence: float = 0.95) -> dict[str, Any]:
    """Per variant and metric (each task, then ``average``): the estimate over seeds and the paired
    difference from ``reference`` over the seeds both ran.

    Returns:
        ``{"metrics": [...], "reference": name, "rows": [{"variant", "seeds", "scores": {m: Estimate},
        "diff": {m: Estimate or None}}]}`` (``diff`` is None for the reference itself).

    Raises:
        ValueError: ``reference`` was not run.
    """
    if reference not in scores:
        raise ValueError(f"reference variant {reference!r} has no scores; variants run: {sorted(scores)}")
    tasks = sorted({t for runs in scores.values() for s in runs.values() for t in s["tasks"]})
    metrics = [*tasks, AVERAGE]
    ref = scores[reference]
    rows = []
    for variant, runs in scores.items():
        seeds = sorted(runs)
        row: dict[str, Any] = {"variant": variant, "seeds": seeds, "scores": {}, "diff": {}}
        for m in metrics:
            row["scores"][m] = t_interval([_metric(runs[s], m) for s in seeds], confidence)
            paired = [s for s in seeds if s in ref]
            if variant == reference or not paired:
                row["diff"][m] = None
            else:
                row["diff"][m] = t_interval([_metric(runs[s], m) - _metric(ref[s], m) for s in paired], confidence)
        rows.append(row)
    return {"metrics": metrics, "reference": reference, "rows": rows, "confidence": confidence}


def verdict(diff: Optional[Estimate]) -> str:
    """'better' / 'worse' when the paired interval excludes 0, else 'no effect measured'."""
    if diff is None:
        return "reference"
    if diff.n < 2:
        return "one seed: no interval"
    if not diff.excludes_zero():
        return "no effect measured"
    return "better" if diff.mean > 0 else "worse"


def render_markdown(table: dict[str, Any], labels: Optional[Mapping[str, str]] = None,
                    zero_shot: Sequence[str] = ()) -> str:
    """Two tables: scores (mean ± half-width) and paired differences from the reference with verdicts.

    ``zero_shot``: tasks whose train split no variant ingested (marked ``(zero-shot)``).
    """
    metrics, ref = table["metrics"], table["reference"]
    pct = round(table["confidence"] * 100)
    head = [f"{m} (zero-shot)" if m in zero_shot else m for m in metrics]
    lines = [f"Scores: mean ± half-width of the {pct} % t-interval over seeds.", "",
             "| variant | seeds | " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(metrics)]
    for r in table["rows"]:
        lines.append(f"| {r['variant']} | {len(r['seeds'])} | " + " | ".join(str(r["scores"][m]) for m in metrics) + " |")
    lines += ["", f"Paired difference from **{ref}** (same seeds), {pct} % interval; an interval containing 0 "
              "is 'no effect measured'.", "",
              "| variant | " + " | ".join(head) + " | verdict (average) |", "|---|" + "---:|" * len(metrics) + "---|"]
    for r in table["rows"]:
        if r["variant"] == ref:
            continue
        cells = []
        for m in metrics:
            d = r["diff"][m]
            cells.append("n/a" if d is None else (f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]" if d.n >= 2
                                                  else f"{d.mean:+.4f}"))
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + f" | {verdict(r['diff'][AVERAGE])} |")
    if labels:
        lines += ["", "Variants:", *[f"- **{k}**: {v}" for k, v in labels.items()]]
    return "\n".join(lines) + "\n"


def seed_overrides(raw_ingest_datasets: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Any]:
    """Config overrides that make ``seed`` the run's data and training seed.

    The data seed is every ingest dataset's ``seed`` (its row sample and, for classification,
    which same-label text becomes each text's positive); the training seed (``train.seed``)
    drives the batch sampler and the random negatives. Generation is not reseeded: synthetic data
    is the expensive, cached part every seed shares.
    """
    return {"train.seed": seed, "ingest.datasets": [{**dict(ds), "seed": seed} for ds in raw_ingest_datasets]}
