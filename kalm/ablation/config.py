"""Config of an ablation: the variants (config overrides), the seeds, the reference variant."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from kalm.configbase import Strict


class Variant(Strict):
    """One lever setting: dotted config overrides (as ``kalm run --set``) and what it tests."""

    overrides: dict[str, Any] = Field(default_factory=dict)
    description: str = ""


DEFAULT_VARIANTS: dict[str, Variant] = {
    "full": Variant(description="the full recipe: ranking-consistency filter, semi-homogeneous batches, "
                                "mined hard negatives, persona data"),
    "no-filter": Variant(overrides={"filter.enabled": False}, description="no ranking-consistency filtering"),
    "random-batches": Variant(overrides={"train.sampler": "random"}, description="random (mixed-task) batches"),
    "homogeneous-batches": Variant(overrides={"train.sampler": "homogeneous"},
                                   description="fully homogeneous (single-task) batches"),
    "no-persona-data": Variant(overrides={"generate.enabled": False},
                               description="without persona-based synthetic data"),
    "no-hard-negatives": Variant(overrides={"train.num_hard_negatives": 0}, description="in-batch negatives only"),
}


class AblationConfig(Strict):
    """``ablation:`` section of a run config (used by ``kalm ablate``; ignored by ``kalm run``)."""

    reference: str = Field("full", description="the variant every other one is compared with (paired by seed)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="data + training seeds; every variant runs once per seed")
    confidence: float = Field(0.95, gt=0, lt=1)
    variants: dict[str, Variant] = Field(default_factory=lambda: dict(DEFAULT_VARIANTS))

    @model_validator(mode="after")
    def _reference_is_a_variant(self) -> "AblationConfig":
        if self.reference not in self.variants:
            raise ValueError(f"ablation.reference {self.reference!r} is not one of ablation.variants "
                             f"{sorted(self.variants)}: name one of them, or add it")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"ablation.seeds {self.seeds} repeats a seed: give distinct seeds")
        return self
