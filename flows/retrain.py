"""The KaLM recipe as one Prefect flow: generate -> ingest -> filter -> train -> evaluate -> report.

Each stage is a cached, retried Prefect task (generation: a subflow of per-shard tasks).
Cache keys come from each stage's config and its inputs' content, never the run id, so a
new run of an unchanged config reuses every stage and a changed setting recomputes only
that stage and what follows it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger

from flows.stage_runner import (STAGES, StageFailed, check_inputs, has_stored_result, quiet_data_faults, record_failure,
                                run_stage, stored_result)
from kalm.config import RunConfig
from kalm.rerun import run_config, select_stages, stage_disabled
from kalm.stage import StageResult
from kalm.store import RunStore, new_run_id

quiet_data_faults()  # a bad row is told by its message (file, row, field, fix), not by the flow's traceback


class _StopBefore(Exception):
    """``--only`` asked for stages this run has nothing after: the run ends before ``stage``."""

    def __init__(self, stage: str):
        super().__init__(stage)
        self.stage = stage


@flow(name="retrain")
def retrain(config: Optional[str] = None, run_id: Optional[str] = None, overrides: Optional[dict[str, Any]] = None,
            only: Optional[list[str]] = None, start: Optional[str] = None) -> dict[str, Any]:
    """Run the whole recipe (or the chosen stages of an existing run) and return its summary.

    ``config``: a preset or YAML file; None = the config recorded in ``run_id``'s manifest (an
    existing run), else the cpu-demo preset. See :func:`kalm.rerun.run_config`."""
    from tasks.evaluate import evaluate_task, gate_task, report_task
    from tasks.filter import filter_task
    from tasks.generate import generate_stage
    from tasks.ingest import ingest_task
    from tasks.train import train_task

    logger = get_run_logger()
    cfg, config_source, recorded = run_config(config, run_id, overrides)
    partial = bool(only or start)
    if partial and not run_id:
        raise ValueError("--only/--from rerun stages of an existing run: give its --run-id")
    store = RunStore(cfg.runs_dir, run_id or default_run_id(cfg.name))
    todo = select_stages(only, start)
    # A partial rerun recomputes the chosen stages (cache bypassed) and takes the others from the run.
    refresh = partial
    from prefect.runtime import flow_run

    store.update_manifest(run_id=store.run_id, config_source=config_source, config=cfg.model_dump(mode="json"),
                          **recorded,
                          started_at=time.strftime("%Y-%m-%dT%H:%M:%S"), status="running",
                          flow_run_id=str(flow_run.id) if flow_run.id else None)
    logger.info("run %s in %s (stages: %s)", store.run_id, store.root, ", ".join(s for s in STAGES if s in todo))
    run_dir = str(store.root)
    data_dir = cfg.resolved_data_dir()

    last_asked = max(STAGES.index(s) for s in todo)

    def stage(name: str, call, upstream: list[StageResult], **kwargs: Any) -> StageResult:
        if name not in todo:
            stored = has_stored_result(store, name)  # one manifest read decides the three cases below
            if STAGES.index(name) > last_asked and not stored:
                raise _StopBefore(name)  # e.g. `--only generate` on a new run: nothing after it to take
            if not stored and stage_disabled(cfg, name):
                # A disabled stage has no output to take and costs nothing to run: `--only ingest` on a
                # new run whose config turns generation off needs no `generate` first.
                return run_stage(store, name, call, refresh=refresh, config_hash=cfg.stage_hash(name),
                                 upstream=upstream, **kwargs)
            try:
                return stored_result(store, name, asked=STAGES[STAGES.index(name) + 1:last_asked + 1])
            except StageFailed as e:  # recorded on the first stage asked for: the manifest and report say why
                store.record_stage(next(s for s in STAGES if s in todo), fresh=True, status="failed",
                                   error=f"StageFailed: {e}")
                raise
        return run_stage(store, name, call, refresh=refresh, config_hash=cfg.stage_hash(name), upstream=upstream,
                         **kwargs)

    try:
        generated = stage("generate", generate_stage, [], cfg=cfg.generate, run_dir=run_dir)
        # Synthetic examples go through ingest with the open data: one dedup and decontamination for all.
        ingested = stage("ingest", ingest_task, [generated], cfg=cfg.ingest, inputs=[generated], run_dir=run_dir)
        filtered = stage("filter", filter_task, [ingested], cfg=cfg.filter, inputs=[ingested], run_dir=run_dir)
        trained = stage("train", train_task, [filtered], cfg=cfg.train, inputs=[filtered], run_dir=run_dir)
        if "evaluate" in todo:
            scores = evaluate_models(store, cfg, trained, data_dir, evaluate_task, refresh=refresh)
        else:
            before = bool(todo & set(STAGES[:STAGES.index("evaluate")]))
            scores = stored_scores(store, trained, rerun_before_evaluate=before, warn=logger.warning)
        decision = gate_task(cfg.evaluate, scores.get("trained"), str(trained.output("model")), run_dir,
                             str(cfg.runs_dir), unscored=None if "evaluate" in todo else unscored_reason(store))
        store.update_manifest(status="done", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), scores=scores,
                              promoted=decision.get("promoted"), gate=decision)
        report = report_task(store.read_manifest(), scores, run_dir, in_domain_tasks(cfg, ingested), gate=decision)
    except StageFailed:
        store.update_manifest(status="failed", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        _report_failure(store, cfg, report_task)
        raise
    except _StopBefore as stop:
        logger.info("run %s ends before %s: the stages asked for are done and this run has no %s stage to go on "
                    "with (kalm run --run-id %s --from %s continues it)", store.run_id, stop.stage, stop.stage,
                    store.run_id, stop.stage)
        store.update_manifest(status="done", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), stopped_before=stop.stage)
        report = report_task(store.read_manifest(), {}, run_dir)
        store.update_manifest(report=str(report))
        return {"run_id": store.run_id, "run_dir": run_dir, "scores": {}, "report": str(report), "gate": None}
    store.update_manifest(report=str(report))
    logger.info("report: %s", report)
    return {"run_id": store.run_id, "run_dir": run_dir, "scores": scores, "report": str(report), "gate": decision}


def stored_scores(store: RunStore, trained: StageResult, rerun_before_evaluate: bool, warn=print
                  ) -> dict[str, dict[str, Any]]:
    """The run's recorded scores when evaluate is not rerun (``--only``/``--from`` before it).

    The trained model's scores stand only while the model is the one they were measured on (its
    content hash, recorded by evaluate): an unchanged retrain keeps them. A model that changed
    loses them, and the evaluate stage is marked ``stale`` in the manifest (and the report's stage
    table), so neither the gate nor the report judges the new model by the old one's scores."""
    entry = store.read_manifest().get("stages", {}).get("evaluate") or {}
    scores = dict(entry.get("scores") or {})
    if not rerun_before_evaluate or "trained" not in scores:
        return scores
    if entry.get("scored_model_hash") and entry["scored_model_hash"] == trained.hashes.get("model"):
        return scores
    scores.pop("trained")
    fix = _score_command(store)
    store.record_stage("evaluate", status="stale", scores=scores,
                       metrics={k: v for k, v in (entry.get("metrics") or {}).items() if not k.startswith("trained/")},
                       note=f"the trained model changed after these scores were measured; {fix} scores it")
    warn(f"evaluate was not rerun: the newly trained model has no scores yet ({fix} scores it)")
    return scores


def unscored_reason(store: RunStore) -> str:
    """Why a rerun that stopped before evaluate has no scores for its trained model, for the gate: the
    evaluate stage's ``stale`` note (the model changed since it was scored), else that evaluate has
    not scored it; both with the command that does."""
    entry = store.read_manifest().get("stages", {}).get("evaluate") or {}
    if entry.get("status") == "stale" and entry.get("note"):
        return f"evaluate was not rerun: {entry['note']}"
    return f"evaluate has not scored it; {_score_command(store)} scores it"


def _score_command(store: RunStore) -> str:
    return f"kalm run --run-id {store.run_id} --only evaluate"


def default_run_id(name: str) -> str:
    """The run folder of this flow run: stable across ``prefect flow-run retry`` of the same run."""
    from prefect.runtime import flow_run

    if flow_run.id:
        started = flow_run.scheduled_start_time.strftime("%Y%m%d-%H%M%S")
        return f"{name}-{started}-{str(flow_run.id)[:8]}"
    return new_run_id(name)


def evaluate_models(store: RunStore, cfg: RunConfig, trained: StageResult, data_dir: Optional[Path],
                    evaluate_task, refresh: bool = False) -> dict[str, dict[str, Any]]:
    """Score the trained model, its starting point and any baselines on the same tasks."""
    models = {"trained": str(trained.output("model"))}
    if cfg.evaluate.evaluate_base:
        models = {"base": cfg.train.student, **models}
    for ref in cfg.evaluate.baselines:
        models.setdefault(ref.removeprefix("pkg:"), ref)
    store.record_stage("evaluate", fresh=True, status="running", models=models)
    start = time.perf_counter()
    try:
        check_inputs(store, "evaluate", [trained])
        futures = {label: evaluate_task.submit(model_ref=ref, cfg=cfg.evaluate, run_dir=str(store.root), label=label,
                                               data_dir=str(data_dir) if data_dir else None, refresh=refresh)
                   for label, ref in models.items()}
        scores = {label: f.result() for label, f in futures.items()}
    except Exception as e:
        raise record_failure(store, "evaluate", e, start)
    for label, ref in models.items():  # this run's model, never the path of the run the cached scores came from
        scores[label] = {**scores[label], "model": ref}
    all_cached = all(set(s.get("cached", [])) >= set(s["tasks"]) for s in scores.values())
    store.record_stage("evaluate", status="cached" if all_cached else "done",
                       seconds=round(time.perf_counter() - start, 2), scored_model_hash=trained.hashes.get("model"),
                       metrics={f"{label}/average": s["average"] for label, s in scores.items()}, scores=scores)
    return scores


def in_domain_tasks(cfg: RunConfig, ingested: Optional[StageResult] = None) -> set[str]:
    """Evaluation tasks whose train split was ingested (their scores are in-domain).

    A dataset marked ``in_domain`` counts when it gave examples (``ingested``'s stats); an optional one
    that was skipped (e.g. SciFact, whose local folder has only its test split) leaves its task zero-shot.
    A dataset's task folder is its ``path`` when that is a folder, else the file's folder.
    """
    used = None if ingested is None else set(ingested.info.get("in_domain_sources", []))
    folders = set()
    for ds in cfg.ingest.datasets:
        if ds.in_domain and ds.path and (used is None or ds.name in used):
            p = Path(ds.path)
            folders.add(p.name if p.is_dir() else p.parent.name)
    return {t.name for t in cfg.evaluate.tasks if t.local and Path(t.local).name in folders}


def _report_failure(store: RunStore, cfg: RunConfig, report_task) -> None:
    """Write the report even for a failed run: it names the failed stage, its error and log tail."""
    try:
        manifest = store.read_manifest()
        # Scores of an evaluate stage that did not finish this time belong to a model that may be gone.
        finished = manifest.get("stages", {}).get("evaluate", {}).get("status") in ("done", "cached")
        report_task(manifest, manifest.get("scores", {}) if finished else {}, str(store.root), in_domain_tasks(cfg))
    except Exception:  # the original failure is what matters; never mask it
        pass


if __name__ == "__main__":
    retrain()
