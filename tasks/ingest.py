"""Prefect task: ingest open datasets into the example schema."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from kalm.ingest.config import IngestConfig
from kalm.stage import StageResult
from tasks.common import ProgressArtifact, publish_summary, results_dir, stage_cache_key_fn


@task(name="ingest", retries=2, retry_delay_seconds=5, cache_key_fn=stage_cache_key_fn,
      persist_result=True, result_storage=results_dir())
def ingest_task(cfg: IngestConfig, run_dir: str) -> StageResult:
    from kalm.ingest.stage import run_ingest

    progress = ProgressArtifact("ingest-progress", "Ingesting open datasets")
    result = run_ingest(cfg, Path(run_dir) / "ingest", progress=progress)
    progress.close()
    rows = ["| source | rows read | examples | in-domain | task types |", "|---|---:|---:|---|---|"]
    for name, s in result.info["per_source"].items():
        rows.append(f"| {name} | {s['rows_read']} | {s['examples']} | {'yes' if s['in_domain'] else 'no'} | {s['task_types']} |")
    publish_summary(result, "ingest", "\n".join(rows))
    return result
