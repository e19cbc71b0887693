"""Config of the evaluate stage (mteb evaluation, report, quality gate)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, field_validator, model_validator

from kalm.configbase import Strict


class EvalTask(Strict):
    """One evaluation task: a local folder under ``data_dir`` when it exists, else mteb's named task."""

    name: str = Field(..., description="mteb task name, e.g. STSBenchmark (results are filed under it)")
    local: Optional[str] = Field(None, description="folder under data_dir laid out like ../shared/data/<task>")
    max_samples: Optional[int] = Field(None, ge=1, description="score a seeded subsample of the local folder: at "
                                       "most this many pairs / texts / sentences per problem / documents per split "
                                       "(kalm.evaluation.subsample; not comparable to the leaderboard)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("evaluate.tasks[].name is empty: give the mteb task name, e.g. STSBenchmark")
        return v.strip()


class EvaluateConfig(Strict):
    tasks: list[EvalTask] = Field(default_factory=list)
    benchmarks: list[str] = Field(default_factory=list, description="mteb benchmark names, e.g. 'MTEB(eng, v2)'")
    batch_size: int = Field(64, ge=1)
    matryoshka_dim: Optional[int] = Field(None, ge=1, description="evaluate embeddings truncated to this size")
    baselines: list[str] = Field(default_factory=list, description="model references scored beside the run")
    gate_margin: float = Field(0.005, ge=0, description="promote unless average drops more than this below the current model")
    promote: bool = Field(True, description="record a model that passes the gate as the current one; "
                                            "off for ablation variants, which compare but never promote")
    evaluate_base: bool = True
    corpus_chunk_size: int = Field(50_000, ge=1, description="retrieval: documents encoded and scored at once "
                                   "(mteb's chunked search; memory ~ chunk * (dim + queries) * 4 bytes)")
    max_samples: Optional[int] = Field(None, ge=1, description="default max_samples of every local task that "
                                       "sets none (a time budget for many tasks, e.g. the CPU demo)")
    fan_out: bool = Field(False, description="one Prefect task per (model, task), spread over the task runner")

    @model_validator(mode="before")
    @classmethod
    def _removed_instructions(cls, data: Any) -> Any:
        if isinstance(data, dict) and "instructions" in data:
            raise ValueError(
                "evaluate.instructions was removed: a model is evaluated with the prompts saved in it, as mteb and "
                "everyone else evaluate it (a kalm export writes them from train.use_instructions and the instruction "
                "policy; a model mteb registers gets its registered instructions). Delete evaluate.instructions")
        return data

    def tasks_with_defaults(self) -> list[EvalTask]:
        """``tasks`` with the default ``max_samples`` filled in where a task sets none."""
        if self.max_samples is None:
            return list(self.tasks)
        return [t if t.max_samples else t.model_copy(update={"max_samples": self.max_samples}) for t in self.tasks]

    @model_validator(mode="after")
    def _unique_tasks(self) -> "EvaluateConfig":
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"evaluate.tasks lists {dup} more than once: keep one entry per task")
        return self
