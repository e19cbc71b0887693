"""Config of the ingest stage."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from kalm.configbase import Strict, TaskType


class DatasetSource(Strict):
    """One open dataset: a local JSONL/Parquet ``path``, a hub ``hf_name``, or both
    (the local file is used when it exists, the hub dataset otherwise).

    ``format`` says how rows become examples:
    - ``pairs``: ``query``/``positive`` fields (names in ``fields``), optional ``negatives``;
    - ``sts``: sentence1/sentence2/score rows; pairs scoring >= ``min_score`` become query/positive;
    - ``classification``: text/label rows; query = text, positive = another text of the same label,
      negatives = texts of other labels (KaLM's treatment of classification data);
    - ``examples``: rows already in the kalm schema.
    """

    name: str = Field(..., description="short name recorded as the examples' source")
    path: Optional[Path] = None
    hf_name: Optional[str] = None
    hf_config: Optional[str] = None
    split: str = "train"
    format: Literal["pairs", "sts", "classification", "examples"] = "pairs"
    task_type: Optional[TaskType] = None
    instruction: str = ""
    language: str = "en"
    fields: dict[str, str] = Field(default_factory=dict, description="schema field -> dataset column")
    min_score: float = Field(4.0, description="sts format: minimum score of a positive pair")
    max_rows: Optional[int] = Field(None, ge=1, description="take at most this many examples (seeded sample)")
    in_domain: bool = Field(False, description="drawn from an evaluation task's train split (marked in reports)")
    seed: int = 0

    @model_validator(mode="after")
    def _one_location(self) -> "DatasetSource":
        if self.path is None and self.hf_name is None:
            raise ValueError(f"dataset {self.name!r}: give 'path' (local file) or 'hf_name' (hub dataset)")
        return self


class IngestConfig(Strict):
    datasets: list[DatasetSource] = Field(default_factory=list)
