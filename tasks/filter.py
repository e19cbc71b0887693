"""Prefect task: ranking-consistency filtering and hard-negative mining."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from kalm.filtering.config import FilterConfig
from kalm.stage import StageResult
from tasks.common import (KALM_DIR, ProgressArtifact, publish_summary, results_dir, retry_unless_data_error,
                          stage_cache_key_fn)


@task(name="filter", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_data_error,
      cache_key_fn=stage_cache_key_fn, persist_result=True,
      result_storage=results_dir(), tags=["gpu"])
def filter_task(cfg: FilterConfig, inputs: list[StageResult], run_dir: str) -> StageResult:
    from kalm.filtering.stage import run_filter

    progress = ProgressArtifact("filter-progress", "Ranking-consistency filter")
    files = [p for r in inputs for p in r.example_files()]
    result = run_filter(cfg, files, Path(run_dir) / "filter", KALM_DIR / "cache" / "embeddings", progress=progress)
    progress.close()
    stats = result.info["stats"]
    lines = ["| task type | kept | dropped |", "|---|---:|---:|",
             *[f"| {k} | {v['kept']} | {v['dropped']} |" for k, v in sorted(stats["by_task_type"].items())],
             "", "| source | kept | dropped |", "|---|---:|---:|",
             *[f"| {k} | {v['kept']} | {v['dropped']} |" for k, v in sorted(stats["by_source"].items())],
             "", "| positive rank | examples |", "|---|---:|",
             *[f"| {k} | {v} |" for k, v in stats["rank_histogram"].items()],
             "", "| given negative removed | count |", "|---|---:|",
             *[f"| {k} | {v} |" for k, v in stats["negatives_removed"].items()],
             "", "| pool | examples | search | depth | recall@depth |", "|---|---:|---|---:|---:|",
             *[f"| {k} | {v['examples']} | {v['kind']} | {v['depth']} | "
               f"{v['recall']['recall'] if 'recall' in v else 'exact'} |" for k, v in stats.get("pools", {}).items()]]
    publish_summary(result, "filter", "\n".join(lines))
    return result
