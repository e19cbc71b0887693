"""The run report: every evaluated model's scores side by side, counts and timings per stage.

``build_report`` writes ``report.md`` and ``scores.png`` into the run folder; ``score_rows`` gives
the same score table as rows (for a Prefect table artifact).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from kalm.evaluation.gate import verdict_text
from kalm.stage import STAGES
from kalm.store import atomic_write_text

# The pair whose difference the report shows (the run's effect on its student).
BASE, TRAINED = "base", "trained"


def _num(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def score_rows(scores: dict[str, dict[str, Any]], in_domain_tasks: set[str] = frozenset()) -> list[dict[str, Any]]:
    """One row per task (then one per task type average, then the overall average): a column per model,
    plus ``delta`` = trained - base where both exist. Tasks whose train split was ingested are marked, and
    tasks scored on a subsample (``evaluate.max_samples``) say so."""
    models = [m for m, s in scores.items() if s]
    sampled = {t: n for m in models for t, n in (scores[m].get("max_samples") or {}).items()}
    tasks = sorted({t for m in models for t in scores[m].get("tasks", {})})
    types: dict[str, str] = {}
    for m in models:
        types.update(scores[m].get("types", {}))
    with_delta = BASE in models and TRAINED in models
    rows: list[dict[str, Any]] = []

    def row(label: str, kind: str, values: dict[str, Optional[float]]) -> dict[str, Any]:
        r: dict[str, Any] = {"task": label, "type": kind}
        for m in models:
            v = values.get(m)
            r[m] = None if v is None else round(v, 4)
        if with_delta:
            b, t = r.get(BASE), r.get(TRAINED)
            r["delta"] = None if b is None or t is None else round(t - b, 4)
        return r

    for t in tasks:
        label = t + (" (in-domain)" if t in in_domain_tasks else "")
        label += f" (sample {sampled[t]:,})" if t in sampled else ""
        rows.append(row(label, types.get(t, ""), {m: _num(scores[m].get("tasks", {}).get(t)) for m in models}))
    distinct_types = sorted({types[t] for t in tasks if t in types})
    per_type = [sum(1 for t in tasks if types.get(t) == ty) for ty in distinct_types]
    if len(distinct_types) > 1 and max(per_type) > 1:  # a type average says something new only then
        for ty in distinct_types:
            rows.append(row(f"average {ty}", ty, {m: _num(scores[m].get("by_type", {}).get(ty)) for m in models}))
    rows.append(row("average", "", {m: _num(scores[m].get("average")) for m in models}))
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(no scores)"]
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |",
           "|" + "|".join("---" if c in ("task", "type") else "---:" for c in cols) + "|"]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if v is None:
                cells.append("")
            elif c == "delta":
                cells.append(f"{v:+.4f}")
            elif isinstance(v, float):
                cells.append(f"{v:.4f}")
            else:
                cells.append(f"**{v}**" if c == "task" and str(v) == "average" else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return out


def _fmt_counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((counts or {}).items()))


def _stage_rows(stages: dict[str, Any]) -> list[str]:
    lines = ["| stage | status | seconds | counts | metrics |", "|---|---|---:|---|---|"]
    names = [s for s in STAGES if s in stages] + sorted(set(stages) - set(STAGES))  # in the order they run
    for name in names:
        s = stages[name] or {}
        status = str(s.get("status", "?")) + (f" (from {s['cached_from']})" if s.get("cached_from") else "")
        status += f": {s['note']}" if s.get("note") else ""  # e.g. a stale evaluate: what to run
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in sorted((s.get("metrics") or {}).items()))
        seconds = s.get("seconds")
        lines.append(f"| {name} | {status} | {'' if seconds is None else f'{float(seconds):.1f}'} | "
                     f"{_fmt_counts(s.get('counts') or {})} | {metrics} |")
    total = sum(float(s.get("seconds") or 0) for s in stages.values() if isinstance(s, dict))
    lines.append(f"| **total** | | {total:.1f} | | |")
    return lines


def _eval_time_lines(scores: dict[str, dict[str, Any]]) -> list[str]:
    models = [m for m, s in scores.items() if s and s.get("seconds")]
    if not models:
        return []
    tasks = sorted({t for m in models for t in scores[m]["seconds"]})
    lines = ["## Evaluation time (seconds; cached = served from the results cache)", "",
             "| task | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for t in tasks:
        cells = []
        for m in models:
            sec = scores[m]["seconds"].get(t)
            cached = t in (scores[m].get("cached") or [])
            cells.append("" if sec is None else f"{sec:.1f}" + (" (cached)" if cached else ""))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines + [""]


def _model_lines(models: dict[str, str], scores: dict[str, dict[str, Any]]) -> list[str]:
    """A row per evaluated model: its reference and the loader it was scored with (mteb's registered
    loader, or mteb's sentence-transformers wrapper with the model's saved prompts)."""
    labels = list(models) + [m for m in scores if m not in models]
    if not labels:
        return []
    out = ["| model | reference | loader |", "|---|---|---|"]
    for label in labels:
        s = scores.get(label) or {}
        ref = models.get(label) or s.get("model") or ""
        loader = s.get("loader") or ("(not recorded)" if s else "(not evaluated)")
        out.append(f"| **{label}** | {f'`{ref}`' if ref else ''} | {loader} |")
    return out + [""]


def _task_notes(scores: dict[str, dict[str, Any]]) -> list[str]:
    """What a task left out of its score and why (e.g. retrieval queries without a relevant document, or the
    subsample it was scored on)."""
    notes = {}
    for s in scores.values():
        for task, items in (s or {}).get("notes", {}).items():
            for note in items:
                notes.setdefault((task, note), None)
    if not notes:
        return []
    return ["What each score covers (left out as mteb leaves it out, or subsampled):", "",
            *[f"- {t}: {n}" for t, n in notes], ""]


def _unevaluated_folders(scores: dict[str, dict[str, Any]]) -> list[str]:
    """Task folders beside the evaluated local ones (e.g. the rest of ../shared/data) that this run did
    not score: said in the report, never left out silently."""
    from kalm.evaluation.tasks import is_task_folder, mteb_task_name

    evaluated = {Path(p).resolve() for s in scores.values() for p in ((s or {}).get("local") or {}).values()}
    missing: dict[Path, list[Path]] = {}
    for parent in sorted({p.parent for p in evaluated}):
        try:
            found = [d for d in sorted(parent.iterdir()) if is_task_folder(d) and d.resolve() not in evaluated]
        except OSError:
            continue
        if found:
            missing[parent] = found
    lines = []
    for parent, folders in missing.items():
        names = ", ".join(f"`{d.name}` ({mteb_task_name(d)})" for d in folders)
        lines += [f"Not evaluated in this run (not in `evaluate.tasks`): {names} in `{parent}`. Score a model on "
                  f"every folder there with `kalm eval MODEL --tasks {parent} --output DIR`.", ""]
    return lines


def _subset_notes(scores: dict[str, dict[str, Any]]) -> list[str]:
    notes = []
    for m, s in scores.items():
        for task, subs in (s or {}).get("subsets", {}).items():
            if len(subs) > 1:
                parts = ", ".join(f"{k} {v:.4f}" for k, v in sorted(subs.items()))
                notes.append(f"- {m} / {task}: mean of {len(subs)} subsets ({parts})")
    return (["Per-subset scores (the task score is their mean, as mteb computes it):", "", *notes, ""]
            if notes else [])


def ingest_table(info: dict[str, Any]) -> list[str]:
    """Markdown lines: per ingested dataset, rows read, examples, dropped by reason, decontaminated
    (per evaluation task), deduplicated, sampled out, single negatives removed by reason (e.g. a given
    negative equal to its positive); ``info`` is the ingest StageResult's info."""
    per = (info or {}).get("per_source") or {}
    skipped = (info or {}).get("skipped_datasets") or {}
    if not per and not skipped:
        return []

    def counts(d: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted((d or {}).items())) or "0"

    lines = ["## Training data (ingest)", "",
             "| dataset | format | rows read | examples | dropped (by reason) | decontaminated (by task) "
             "| deduplicated | sampled out | negatives removed (by reason) | in-domain |",
             "|---|---|---:|---:|---|---|---|---:|---|---|"]
    for name, s in per.items():
        lines.append(f"| {name} | {s.get('format', '')} | {s.get('rows_read', 0)} | {s.get('examples', 0)} "
                     f"| {counts(s.get('dropped'))} | {counts(s.get('decontaminated'))} "
                     f"| {counts(s.get('deduplicated'))} | {s.get('sampled_out', 0)} "
                     f"| {counts(s.get('negatives_removed'))} | {'yes' if s.get('in_domain') else 'no'} |")
    for name, why in skipped.items():
        lines.append(f"| {name} | skipped: {why} | 0 | 0 | | | | | | no |")
    lines.append("")
    firsts = [f"- {name} / {reason}: {', '.join(rows)}" for name, s in per.items()
              for reason, rows in (s.get("first_rows") or {}).items() if rows and not reason.startswith("dedup")]
    if firsts:
        lines += ["First rows of each drop reason:", "", *firsts, ""]
    return lines


def flag_lines(stages: dict[str, Any]) -> list[str]:
    """A "Warnings" section for every flag a stage raised in its result (``info["flags"]``, e.g. the
    generate stage's time-budget truncation or low yield), so no such run reads as a plain success."""
    flags = [(name, f) for name, s in stages.items() if isinstance(s, dict)
             for f in ((s.get("result") or {}).get("info") or {}).get("flags") or []]
    if not flags:
        return []
    return ["## Warnings", "", *[f"- **{name}**: {f}" for name, f in flags], ""]


def build_report(manifest: dict[str, Any], scores: dict[str, dict[str, Any]], out_dir: Path,
                 in_domain_tasks: set[str] = frozenset(), failures: Optional[dict[str, str]] = None,
                 gate: Optional[dict[str, Any]] = None) -> Path:
    """Write ``report.md`` (and ``scores.png`` when there are scores) into ``out_dir``; returns report.md.

    ``scores``: {model label: evaluate_model summary}, e.g. base / trained / baselines.
    ``failures``: {stage: error text} for stages that failed (the manifest's own error and
    log tail are shown too). ``gate``: the quality gate's decision, when already known.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = manifest.get("stages", {}) or {}
    scores = {m: s for m, s in (scores or {}).items() if s}
    lines = [f"# Run {manifest.get('run_id', out_dir.name)}", "",
             f"status: **{manifest.get('status', 'running')}** · config: `{manifest.get('config_source', '?')}`"
             + (f" · started {manifest['started_at']}" if manifest.get("started_at") else "")
             + (f" · finished {manifest['finished_at']}" if manifest.get("finished_at") else ""), ""]

    if manifest.get("stopped_before"):
        nxt = manifest["stopped_before"]
        run = manifest.get("run_id", out_dir.name)
        lines += [f"Stopped before **{nxt}**: the stages asked for (`--only`) are done and this run has no {nxt} "
                  f"stage yet; `kalm run --run-id {run} --from {nxt}` continues it.", ""]
    lines += flag_lines(stages)
    lines += ["## Scores (mteb main score, 0-1)", ""]
    rows = score_rows(scores, in_domain_tasks)
    lines += markdown_table(rows) if scores else ["(no model was evaluated)"]
    lines.append("")
    lines += _model_lines(manifest.get("stages", {}).get("evaluate", {}).get("models") or {}, scores)
    base_model = (stages.get("train") or {}).get("base_model")
    if base_model:
        lines += [f"The student started from `{base_model}`.", ""]
    if in_domain_tasks:
        lines += ["**in-domain**: the train split of these tasks was ingested as training data, so their scores "
                  "are not zero-shot: " + ", ".join(sorted(in_domain_tasks)), ""]
    lines += _subset_notes(scores)
    lines += _task_notes(scores)
    lines += _unevaluated_folders(scores)
    if scores:
        lines += ["![scores per task](scores.png)", ""]
    if gate:
        lines += ["## Quality gate", "", verdict_text(gate), ""]
    lines += _eval_time_lines(scores)

    lines += ingest_table(((stages.get("ingest") or {}).get("result") or {}).get("info") or {})
    lines += ["## Stages", ""]
    lines += _stage_rows(stages) if stages else ["(no stage recorded)"]
    lines.append("")
    failed = {n: (s or {}) for n, s in stages.items() if (s or {}).get("status") == "failed"}
    for name in [*failed, *[f for f in (failures or {}) if f not in failed]]:
        s = failed.get(name, {})
        error = (failures or {}).get(name) or s.get("error", "")
        lines += [f"## Failed: {name}", "", f"**{error}**", ""]
        if s.get("log_tail"):
            lines += ["```", str(s["log_tail"])[-3000:], "```", ""]
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    if scores:
        from kalm.evaluation.plot import plot_scores

        plot_scores(scores, out_dir / "scores.png", title=f"mteb main scores, run {manifest.get('run_id', '')}")
    return report
