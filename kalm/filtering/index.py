"""FAISS inner-product index chosen by corpus size; GPU when faiss-gpu sees GPUs; chunked."""

from __future__ import annotations

import math

import numpy as np

from kalm.filtering.config import IndexOptions


def choose_kind(n: int, opts: IndexOptions) -> str:
    if opts.kind != "auto":
        return opts.kind
    return "flat" if n < opts.exact_below else "ivf"


def build_index(vectors: np.ndarray, opts: IndexOptions):
    """An index over ``vectors`` (rows L2-normalized, so inner product = cosine)."""
    import faiss

    n, dim = vectors.shape
    kind = choose_kind(n, opts)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, opts.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = opts.hnsw_ef_search
    else:
        nlist = opts.ivf_nlist or max(1, int(4 * math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).choice(n, size=min(n, nlist * 64), replace=False)]
        index.train(sample)
        index.nprobe = min(opts.ivf_nprobe, nlist)
    index = _maybe_gpu(index, opts)
    for i in range(0, n, opts.chunk_size):
        index.add(np.ascontiguousarray(vectors[i:i + opts.chunk_size], dtype=np.float32))
    return index


def _maybe_gpu(index, opts: IndexOptions):
    import faiss

    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if opts.use_gpu == "never" or ngpu == 0:
        if opts.use_gpu == "always":
            raise RuntimeError("filter.index.use_gpu is 'always' but faiss sees no GPU: install faiss-gpu or use 'auto'")
        return index
    if isinstance(index, faiss.IndexHNSWFlat):  # no GPU HNSW in faiss; stays on CPU
        return index
    co = faiss.GpuMultipleClonerOptions()
    co.shard = True  # split the vectors over all GPUs
    return faiss.index_cpu_to_all_gpus(index, co=co, ngpu=ngpu)


def search(index, queries: np.ndarray, k: int, chunk_size: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) for each query, searched in chunks to bound memory."""
    k = min(k, index.ntotal)
    scores, ids = [], []
    for i in range(0, len(queries), chunk_size):
        s, j = index.search(np.ascontiguousarray(queries[i:i + chunk_size], dtype=np.float32), k)
        scores.append(s)
        ids.append(j)
    if not scores:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(scores), np.concatenate(ids)
