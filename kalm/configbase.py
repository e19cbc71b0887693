"""Base class and shared field types for every config model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

TaskType = Literal[
    "retrieval", "sts", "classification", "clustering", "pair_classification", "reranking"
]
TASK_TYPES: tuple[str, ...] = (
    "retrieval", "sts", "classification", "clustering", "pair_classification", "reranking"
)


class Strict(BaseModel):
    """A config section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
