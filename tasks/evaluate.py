"""Prefect tasks: mteb evaluation (cached by model content and task set), the report, the quality gate.

``evaluate_task`` is what the flow calls per model (base, trained, baselines). It runs
``score_task`` -- one per model, or one per (model, task) with ``evaluate.fan_out`` so the
task runner can spread them -- whose cache key is the model's content hash, the task set
(local data hashes, hub revisions), mteb's version, the settings that change scores and the
evaluation code: never the run id, the label or the output folder. A cache hit in Prefect
returns the persisted summary; ``evaluate_task`` then copies mteb's result files for this run
out of kalm's results cache, so every run folder holds its results in mteb's format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from prefect import task

from kalm.evaluation.config import EvalTask, EvaluateConfig
from kalm.store import hash_strings
from tasks.common import ProgressArtifact, artifact_key, results_dir


def eval_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Same weights + same tasks and data + same mteb + same scoring settings/code = same scores."""
    from kalm.evaluation.run import task_set_fingerprint
    from kalm.models import model_fingerprint

    cfg: EvaluateConfig = parameters["cfg"]
    data_dir = Path(parameters["data_dir"]) if parameters.get("data_dir") else None
    return "evaluate-" + hash_strings([
        model_fingerprint(parameters["model_ref"]),
        task_set_fingerprint(cfg.tasks_with_defaults(), cfg.benchmarks, data_dir),
        f"dim={cfg.matryoshka_dim}",
    ])


# log_prints=False: no kalm flow logs prints (none of our code prints; a library's prints are not logs),
# and this task stays quiet even where PREFECT_LOGGING_LOG_PRINTS turns it on: mteb's `datasets` hashes
# functions with dill, which reads their globals from `dis.dis` printed into a captured stdout; Prefect's
# print logging took those prints, so each scored model logged ~300 lines of bytecode and dill saw no globals.
@task(name="score", retries=1, retry_delay_seconds=10, cache_key_fn=eval_cache_key, persist_result=True,
      result_storage=results_dir(), task_run_name="score-{label}", log_prints=False)
def score_task(model_ref: str, cfg: EvaluateConfig, data_dir: Optional[str], output: str, label: str,
               refresh: bool = False) -> dict[str, Any]:
    """mteb scores of one model on ``cfg``'s tasks (results cached on disk and by Prefect)."""
    from kalm.evaluation.run import evaluate_model

    names = ", ".join(t.name for t in cfg.tasks) or ", ".join(cfg.benchmarks)
    progress = ProgressArtifact(f"evaluate-{label}-progress", f"mteb {label}: {names}"[:120])
    try:
        return evaluate_model(model_ref, cfg.tasks_with_defaults(), Path(output),
                              data_dir=Path(data_dir) if data_dir else None,
                              batch_size=cfg.batch_size, matryoshka_dim=cfg.matryoshka_dim, progress=progress,
                              benchmarks=cfg.benchmarks, corpus_chunk_size=cfg.corpus_chunk_size, refresh=refresh)
    finally:
        progress.close()


@task(name="evaluate", task_run_name="evaluate-{label}")
def evaluate_task(model_ref: str, cfg: EvaluateConfig, data_dir: Optional[str], run_dir: str,
                  label: str, refresh: bool = False) -> dict[str, Any]:
    """Scores of ``model_ref`` (labelled base / trained / a baseline) with its mteb files under
    ``<run_dir>/evaluate/<label>``; returns the ``evaluate_model`` summary.

    ``refresh=True`` recomputes (bypasses Prefect's and kalm's caches, then updates both)."""
    from kalm.evaluation.run import combine_summaries, resolve_tasks, restore_outputs

    out = Path(run_dir) / "evaluate" / label
    ddir = Path(data_dir) if data_dir else None
    if cfg.fan_out:
        specs = resolve_tasks(cfg.tasks_with_defaults(), cfg.benchmarks, ddir)
        one = [cfg.model_copy(update={"tasks": [EvalTask(name=s.name, local=str(s.folder) if s.folder else None,
                                                         max_samples=s.max_samples)],
                                      "benchmarks": []}) for s in specs]
        scorer = score_task.with_options(refresh_cache=True) if refresh else score_task
        futures = [scorer.submit(model_ref, c, data_dir, str(out), f"{label}-{c.tasks[0].name}", refresh)
                   for c in one]
        for f in futures:
            f.wait()
        summary = combine_summaries([_marked_if_cached(f.state) for f in futures], model_ref)
    else:
        scorer = score_task.with_options(refresh_cache=True) if refresh else score_task
        summary = _marked_if_cached(scorer(model_ref, cfg, data_dir, str(out), label, refresh, return_state=True))
        # Scores served from the cache name the model path of the run that computed them (maybe deleted
        # since): this run records its own model (case 13).
        summary = {**summary, "model": model_ref}
    if not restore_outputs(summary, out):
        # Prefect's cache held the scores but kalm's results cache lost the files: compute again.
        summary = score_task.with_options(refresh_cache=True)(model_ref, cfg, data_dir, str(out), label, True)
    _publish_scores(label, model_ref, summary)
    return summary


def _marked_if_cached(state: Any) -> dict[str, Any]:
    """The scores in a finished score state; a Prefect cache hit marks every task cached (the
    persisted summary still says what was computed back when it was first scored)."""
    summary = dict(state.result())
    if state.name == "Cached":
        summary["cached"] = list(summary["tasks"])
        summary["cached_by"] = "prefect"
    return summary


def _publish_scores(label: str, model_ref: str, summary: dict[str, Any]) -> None:
    from prefect.artifacts import create_markdown_artifact

    lines = [f"## mteb scores: {label}", "", f"model `{model_ref}`, loaded as: {summary.get('loader', '?')}", "",
             "| task | main score | seconds |",
             "|---|---:|---:|"]
    for t, s in summary["tasks"].items():
        cached = " (cached)" if t in summary.get("cached", []) else ""
        lines.append(f"| {t} | {s:.4f} | {summary.get('seconds', {}).get(t, '')}{cached} |")
    lines.append(f"| **average** | {summary['average']:.4f} | |")
    try:
        create_markdown_artifact(markdown="\n".join(lines), key=artifact_key("scores", label),
                                 description=f"mteb scores of {label}")
    except Exception:  # artifacts are best effort outside a run context
        pass


@task(name="report")
def report_task(manifest: dict[str, Any], scores: dict[str, dict[str, Any]], run_dir: str,
                in_domain_tasks: set[str] = frozenset(), failures: Optional[dict[str, str]] = None,
                gate: Optional[dict[str, Any]] = None) -> Path:
    """Write ``<run_dir>/report.md`` (+ ``scores.png``) and publish it and the score table as artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from kalm.evaluation.report import build_report, score_rows

    report = build_report(manifest, scores, Path(run_dir), set(in_domain_tasks or ()), failures=failures, gate=gate)
    text = report.read_text()
    png = Path(run_dir) / "scores.png"
    if png.exists():  # the UI cannot show a local image: name the file instead
        text = text.replace("![scores per task](scores.png)", f"plot: `{png}`")
    create_markdown_artifact(markdown=text, key="run-report", description=f"report of run {Path(run_dir).name}")
    if scores:
        create_table_artifact(table=score_rows(scores, set(in_domain_tasks or ())), key=artifact_key("scores"),
                              description="mteb main scores per model (0-1)")
    return report


@task(name="quality-gate")
def gate_task(cfg: EvaluateConfig, scores: Optional[dict[str, Any]], model_path: str, run_dir: str,
              runs_dir: str, unscored: Optional[str] = None) -> dict[str, Any]:
    """Promote the trained model (record it in ``<runs_dir>/promoted.json``) unless it is worse than the
    current one by more than ``cfg.gate_margin``; says clearly why not otherwise (``unscored``: why
    the model has no scores, when the flow knows)."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact

    from kalm.evaluation.gate import gate, verdict_text

    decision = gate(scores, model_path, Path(run_dir).name, Path(runs_dir), cfg.gate_margin,
                    fingerprint=(scores or {}).get("fingerprint"), promote=cfg.promote, unscored=unscored)
    logger = get_run_logger()
    (logger.info if decision["promoted"] else logger.warning)(decision["reason"])
    create_markdown_artifact(markdown=f"## Quality gate\n\n{verdict_text(decision)}\n\nregistry: `{decision['registry']}`",
                             key="quality-gate", description="quality gate decision")
    return decision
