"""Prefect task: contrastive training (in-process, or torchrun for several processes)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from deployments.torchrun_node import publish as publish_torchrun_command
from kalm.stage import StageResult
from kalm.training import launch as _launch
from kalm.training.config import TrainConfig
from tasks.common import ProgressArtifact, publish_summary, results_dir, retry_unless_data_error, stage_cache_key_fn

# Multi-node training: node 0 hands its torchrun command to the other pods of the job (see
# deployments/torchrun_node.py); a no-op outside a flow run.
if publish_torchrun_command not in _launch.BEFORE_MULTI_NODE_LAUNCH:
    _launch.BEFORE_MULTI_NODE_LAUNCH.append(publish_torchrun_command)


@task(name="train", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_unless_data_error,
      cache_key_fn=stage_cache_key_fn, persist_result=True,
      result_storage=results_dir(), tags=["gpu"])
def train_task(cfg: TrainConfig, inputs: list[StageResult], run_dir: str) -> StageResult:
    from prefect.artifacts import create_table_artifact

    from kalm.training import train

    progress = ProgressArtifact("train-progress", f"Training {cfg.student}")
    files = [p for r in inputs for p in r.example_files()]
    result = train(cfg, files, Path(run_dir) / "train", progress=progress)
    progress.close()
    losses = result.info.get("losses", [])
    every = max(1, len(losses) // 20)
    create_table_artifact(table=[{"step": i + 1, "loss": round(l, 5)} for i, l in enumerate(losses)
                                 if (i + 1) % every == 0 or i + 1 == len(losses)],
                          key="train-loss", description="training loss")
    publish_summary(result, "train", f"student: `{cfg.student}` · base model recorded for `kalm eval`")
    return result
