"""Benchmark: the filter's exact search on GPUs (kalm-mini's path) against ``mine_hard_negatives``' search.

    python bench/filter_gpu.py                          # on a GPU node: 1M x 1024-dim pool, 262,144 queries
    .venv/bin/python bench/filter_gpu.py --n 50000 --dim 256 --queries 20000   # CPU: the same code, small

Ours: :class:`kalm.filtering.search.ExactSearch` as the filter stage builds it for kalm-mini
(``index.kind: auto`` = exact on a GPU whatever the pool's size): the pool memory-mapped in the
embedding store's dtype (float16), cast to float32 one 65,536-row chunk at a time, searched with
``faiss.knn_gpu`` by every GPU at once (one thread and one result heap per device), queries in
batches of ``index.query_batch`` (kalm-mini: 262,144), depth 116 (kalm-mini's
``max(top_k, negative_rank_end) + search_slack``). Baseline: sentence-transformers'
``mine_hard_negatives(use_faiss=True)`` search, copied from its source: ``faiss.IndexFlatIP`` moved
to every GPU with ``index_cpu_to_all_gpus(co.shard=True, co.useFloat16=True)``, the pool added
once, queries searched in batches of 16,384 (its ``faiss_batch_size``) at the same depth. Without a
GPU both run faiss' CPU search (ours without ``knn_gpu``). Both are timed the same way (wall clock
around the whole search, index building included for the baseline, the pool's memory map
already written for ours, as the filter writes it before searching).

Vectors: ``--n`` unit vectors around ``n / 50`` random centres (so neighbourhoods are dense, as
with real embeddings), float16 as the store keeps them; queries are noisy copies of pool rows.
Recall of each against an exact float32 search on 256 sampled queries (ties counted as hits:
the baseline's float16 index is approximate). Last line: ``{"metric", "ours", "baseline", "ratio", ...}``
in queries per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_vectors(n: int, dim: int, queries: int, folder: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A float16 pool [n, dim] memory-mapped in ``folder`` and float16 queries [queries, dim], unit norm."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 50), dim), dtype=np.float32)
    pool = np.lib.format.open_memmap(folder / "pool.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    for a in range(0, n, 65_536):
        b = min(a + 65_536, n)
        x = centres[rng.integers(0, len(centres), b - a)] + 0.6 * rng.standard_normal((b - a, dim), dtype=np.float32)
        pool[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    pool.flush()
    src = rng.integers(0, n, queries)
    q = pool[np.sort(src)].astype(np.float32) + 0.05 * rng.standard_normal((queries, dim), dtype=np.float32)
    return pool, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float16)


def ours(pool: np.ndarray, q: np.ndarray, k: int, query_batch: int) -> tuple[float, np.ndarray]:
    from kalm.filtering.config import IndexOptions
    from kalm.filtering.search import ExactSearch, cuda_device_count, gpu_count, use_gpu_for

    gpu = use_gpu_for(IndexOptions(), k, gpu_count(), cuda_device_count())
    search = ExactSearch(pool, 65_536, gpu=gpu)
    ids = np.empty((len(q), k), np.int64)
    t = time.perf_counter()
    for a in range(0, len(q), query_batch):
        _, ids[a:a + query_batch] = search.search(q[a:a + query_batch], k)
    return time.perf_counter() - t, ids


def baseline(pool: np.ndarray, q: np.ndarray, k: int, batch: int = 16_384) -> tuple[float, np.ndarray]:
    """``mine_hard_negatives``' search (sentence_transformers/util/hard_negatives.py, use_faiss=True)."""
    import faiss

    ids = np.empty((len(q), k), np.int64)
    t = time.perf_counter()
    index = faiss.IndexFlatIP(pool.shape[1])
    try:
        co = faiss.GpuMultipleClonerOptions()
        co.shard = True
        co.useFloat16 = True
        index = faiss.index_cpu_to_all_gpus(index, co=co)
    except Exception:  # faiss-cpu, as in mine_hard_negatives
        pass
    index.add(np.ascontiguousarray(pool, dtype=np.float32))
    for a in range(0, len(q), batch):
        _, ids[a:a + batch] = index.search(np.ascontiguousarray(q[a:a + batch], dtype=np.float32), k)
    return time.perf_counter() - t, ids


def recall_at_k(pool: np.ndarray, q: np.ndarray, ids: np.ndarray, sample: np.ndarray, k: int) -> float:
    """Share of each sampled query's results scoring at least its exact k-th score (float32 on the CPU, ties
    are hits)."""
    from kalm.filtering.search import ExactSearch

    qs = np.ascontiguousarray(q[sample], dtype=np.float32)
    exact, _ = ExactSearch(pool, 262_144, gpu=False).search(qs, k)
    got = np.einsum("qd,qkd->qk", qs, pool[ids[sample]].astype(np.float32))
    return float((got >= exact[:, -1:] - 1e-5).mean())


def main() -> None:
    from kalm.filtering.search import cuda_device_count, gpu_count

    on_gpu = gpu_count() > 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000 if on_gpu else 50_000)
    ap.add_argument("--dim", type=int, default=1024 if on_gpu else 256)
    ap.add_argument("--queries", type=int, default=262_144 if on_gpu else 20_000)
    ap.add_argument("--query-batch", type=int, default=262_144 if on_gpu else 16_384)
    ap.add_argument("--k", type=int, default=116)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        pool, q = make_vectors(args.n, args.dim, args.queries, Path(tmp))
        print(f"vectors: pool {args.n:,} x {args.dim} float16, {args.queries:,} queries "
              f"({time.perf_counter() - t:.1f} s); GPUs: faiss {gpu_count()}, torch {cuda_device_count()}", flush=True)
        ours_s, ours_ids = ours(pool, q, args.k, args.query_batch)
        print(f"ours: {ours_s:.2f} s ({args.queries / ours_s:,.0f} queries/s)", flush=True)
        base_s, base_ids = baseline(pool, q, args.k)
        print(f"baseline (mine_hard_negatives' faiss search): {base_s:.2f} s "
              f"({args.queries / base_s:,.0f} queries/s)", flush=True)
        sample = np.random.default_rng(1).choice(args.queries, size=min(256, args.queries), replace=False)
        r_ours = recall_at_k(pool, q, ours_ids, sample, args.k)
        r_base = recall_at_k(pool, q, base_ids, sample, args.k)
        print(f"recall@{args.k} vs exact float32 (256 queries, ties are hits): ours {r_ours:.4f}, "
              f"baseline {r_base:.4f}", flush=True)
    o, b = args.queries / ours_s, args.queries / base_s
    print(json.dumps({"metric": f"exact_search_queries_per_second_n{args.n}_d{args.dim}_k{args.k}",
                      "ours": round(o, 1), "baseline": round(b, 1), "ratio": round(o / b, 3),
                      "recall_ours": round(r_ours, 4), "recall_baseline": round(r_base, 4),
                      "gpus": gpu_count(), "query_batch": args.query_batch}))


if __name__ == "__main__":
    main()
