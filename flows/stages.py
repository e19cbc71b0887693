"""One flow per stage: rerun that stage alone on an existing run's stored inputs.

Each is the retrain flow restricted to one stage (``kalm run --run-id ID --only STAGE``),
so a deployment per stage can rerun, say, only training with a new setting after the
data stages finished. Cache is bypassed for the chosen stage; the others come from the run.
"""

from __future__ import annotations

from typing import Any, Optional

from prefect import flow

from flows.retrain import retrain


def _only(stage: str, run_id: str, config: str, overrides: Optional[dict[str, Any]]) -> dict[str, Any]:
    return retrain.fn(config=config, run_id=run_id, overrides=overrides, only=[stage])


@flow(name="generate-stage")
def generate(run_id: str, config: str = "cpu-demo", overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return _only("generate", run_id, config, overrides)


@flow(name="ingest-stage")
def ingest(run_id: str, config: str = "cpu-demo", overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return _only("ingest", run_id, config, overrides)


@flow(name="filter-stage")
def filter_(run_id: str, config: str = "cpu-demo", overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return _only("filter", run_id, config, overrides)


@flow(name="train-stage")
def train(run_id: str, config: str = "cpu-demo", overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return _only("train", run_id, config, overrides)


@flow(name="evaluate-stage")
def evaluate(run_id: str, config: str = "cpu-demo", overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return _only("evaluate", run_id, config, overrides)
