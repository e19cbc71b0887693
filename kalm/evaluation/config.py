"""Config of the evaluate stage."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from kalm.configbase import Strict


class EvalTask(Strict):
    """One evaluation task: a local folder under ``data_dir`` when it exists, else mteb's named task."""

    name: str = Field(..., description="mteb task name, e.g. STSBenchmark")
    local: Optional[str] = Field(None, description="folder under data_dir laid out like ../shared/data/<task>")


class EvaluateConfig(Strict):
    tasks: list[EvalTask] = Field(default_factory=list)
    benchmarks: list[str] = Field(default_factory=list, description="mteb benchmark names, e.g. 'MTEB(eng, v2)'")
    batch_size: int = Field(64, ge=1)
    matryoshka_dim: Optional[int] = Field(None, ge=1, description="evaluate embeddings truncated to this size")
    baselines: list[str] = Field(default_factory=list, description="model references scored beside the run")
    gate_margin: float = Field(0.005, ge=0, description="promote unless average drops more than this below the current model")
    evaluate_base: bool = True
