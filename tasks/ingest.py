"""Prefect task: ingest open datasets into the example schema (sharded Parquet)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from prefect import get_run_logger, task

from kalm.ingest.config import IngestConfig
from kalm.stage import StageResult
from tasks.common import ProgressArtifact, publish_summary, results_dir, retry_unless_data_error, stage_cache_key_fn


# log_prints=False: hub datasets are read with `datasets`, whose dill hashing prints (see tasks/evaluate.py).
@task(name="ingest", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_data_error,
      cache_key_fn=stage_cache_key_fn, persist_result=True, result_storage=results_dir(), log_prints=False)
def ingest_task(cfg: IngestConfig, run_dir: str, inputs: Sequence[StageResult] = ()) -> StageResult:
    """The open datasets of ``cfg`` and the examples of the earlier stages ``inputs`` (the synthetic
    data: deduplicated and decontaminated with them); cached on the config, the content of the files
    it names and the inputs' content, never their run folder."""
    from kalm.ingest.stage import run_ingest, with_stage_examples

    logger = get_run_logger()
    progress = ProgressArtifact("ingest-progress", "Ingesting open datasets")
    result = run_ingest(with_stage_examples(cfg, inputs), Path(run_dir) / "ingest", progress=progress)
    progress.close()
    for name, s in result.info["per_source"].items():
        logger.info("dataset %s: format %s (%s); %d rows read -> %d examples; dropped %s; decontaminated %s; "
                    "deduplicated %s; negatives removed %s", name, s["format"], s["format_reason"], s["rows_read"],
                    s["examples"], s["dropped"] or 0, s["decontaminated"] or 0, s["deduplicated"] or 0,
                    s.get("negatives_removed") or 0)
    for name, why in result.info.get("skipped_datasets", {}).items():
        logger.info("dataset %s skipped: %s", name, why)
    publish_summary(result, "ingest", ingest_markdown(result.info))
    return result


def ingest_markdown(info: dict) -> str:
    """Per dataset: format, rows read, examples, drops by reason (first lines), decontamination, dedup."""
    from kalm.evaluation.report import ingest_table

    return "\n".join(ingest_table(info))
