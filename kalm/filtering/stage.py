"""The filter stage: ranking-consistency filtering and hard-negative mining with FAISS, streamed.

Three passes over the input shards, memory bounded by a record batch plus ~100 bytes per example
(plus one pool's search structures):

1. scan (kalm.filtering.scan): numbers per row, every text into a memory-mapped text table;
2. per candidate pool (kalm.filtering.pools): embed what the store lacks, gather the pool's
   vectors into a memory-mapped file (the store's dtype), search at a fixed depth with right answers excluded
   (kalm.filtering.search), judge ``index.query_batch`` queries at a time (kalm.filtering.judge);
3. write: stream the input again, writing ``kept.parquet/`` and ``dropped.parquet/`` shard
   folders (kalm.schema.ShardWriter) with mined negatives added and ranks in the metadata.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa

from kalm.filtering.config import FilterConfig
from kalm.filtering.embed import TeacherEncoder
from kalm.filtering.judge import judge
from kalm.filtering.pools import Pool, build_pool
from kalm.filtering.scan import NEG_KEEP, NEG_REASONS, Scan, TextTable, scan
from kalm.filtering.store import unique_keys
from kalm.filtering.search import (ExactSearch, FaissSearch, approximate_pays, build_search, cuda_device_count,
                                   gpu_count, tune_recall, use_gpu_for)
from kalm.schema import ShardWriter, count_rows, read_batches
from kalm.stage import Progress, StageResult, no_progress
from kalm.store import atomic_write_json, hash_outputs


def _sub(progress: Progress, lo: float, hi: float) -> Progress:
    return lambda f, msg="": progress(lo + (hi - lo) * min(max(f, 0.0), 1.0), msg)


class Results:
    """Per-row outcomes of the judge, for all N rows (numpy)."""

    def __init__(self, n: int, num_negatives: int):
        self.rank = np.full(n, -1, np.int64)
        self.pos_score = np.full(n, np.nan, np.float32)
        self.mined_occ = np.full((n, num_negatives), -1, np.int64)
        self.judged = np.zeros(n, bool)


def run_filter(cfg: FilterConfig, inputs: Sequence[Path], out: Path, cache_dir: Path,
               progress: Optional[Progress] = None) -> StageResult:
    progress = progress or no_progress
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    inputs = list(inputs)
    timings: dict[str, float] = {}
    texts: Optional[TextTable] = None
    try:
        t = time.perf_counter()
        sc = scan(inputs, work, cfg.use_instructions, cfg.pool_scope, cfg.read_batch_size,
                  _sub(progress, 0, 0.1), total=count_rows(inputs) if inputs else 0)
        timings["scan"] = time.perf_counter() - t
        texts = sc.texts()
        results = Results(sc.rows, cfg.num_negatives)
        pool_info: dict[str, Any] = {}
        encoder_stats: dict[str, Any] = {}
        pool_rows = _rows_by_pool(sc)
        t = time.perf_counter()
        if cfg.enabled and sc.rows:
            with TeacherEncoder(cfg.teacher, cache_dir, cfg.batch_size, cfg.max_seq_length, cfg.runtime,
                                kind=cfg.teacher_kind, static_dims=cfg.static_dims, store_dtype=cfg.store_dtype,
                                devices=cfg.encode_devices, dtype=cfg.dtype) as encoder:
                for i, (name, rows) in enumerate(pool_rows):
                    sub = _sub(progress, 0.1 + 0.8 * i / len(pool_rows), 0.1 + 0.8 * (i + 1) / len(pool_rows))
                    sub(0, f"pool {name}: {len(rows)} examples")
                    pool = build_pool(sc, name, rows, cfg.num_negatives, cfg.search_slack)
                    pool_info[name] = _judge_pool(cfg, sc, pool, encoder, texts, results, work / f"pool-{i}", sub)
                encoder.store.compact()
                encoder_stats = {"embedding_cache": {"hits": encoder.hits, "misses": encoder.misses,
                                                     "stored_vectors": len(encoder.store),
                                                     "disk_bytes": encoder.store.disk_bytes()},
                                 "teacher": {"kind": cfg.teacher_kind, "runtime": encoder.runtime,
                                             "dtype": encoder.dtype,
                                             "process_pools_started": encoder.pools_started}}
        else:
            # No teacher, but negatives that are right answers still go (case 06/07 kinds).
            for name, rows in pool_rows:
                build_pool(sc, name, rows, cfg.num_negatives, cfg.search_slack)
        timings["rank_and_mine"] = time.perf_counter() - t
        t = time.perf_counter()
        written = _write(cfg, inputs, sc, results, texts, out, _sub(progress, 0.9, 1.0))
        timings["write"] = time.perf_counter() - t
    finally:
        if texts is not None:
            texts.close()
        shutil.rmtree(work, ignore_errors=True)

    stats = written["stats"]
    stats.update(encoder_stats)
    stats["pools"] = pool_info
    stats["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    stats_path = atomic_write_json(out / "stats.json", stats)
    progress(1.0, f"kept {stats['kept']} of {sc.rows}")
    removed = stats["negatives_removed"]
    return StageResult(
        stage="filter", out_dir=out, outputs=[*written["kept"], *written["dropped"], stats_path],
        hashes=hash_outputs(out, written["kept"]),
        counts={"input": sc.rows, "kept": stats["kept"], "dropped": stats["dropped"],
                "mined_negatives": stats["mined_negatives"], "negatives_removed": sum(removed.values()),
                "unjudged_zero_vector": sum(p.get("unjudged_zero_vector", 0) for p in pool_info.values()),
                **{f"removed_{k}": v for k, v in removed.items()}},
        seconds=time.perf_counter() - start, info={"stats": stats},
    )


def _rows_by_pool(sc: Scan) -> list[tuple[str, np.ndarray]]:
    order = np.argsort(sc.pool, kind="stable")
    bounds = np.searchsorted(sc.pool[order], np.arange(len(sc.pool_names) + 1))
    pools = [(sc.pool_names[p], order[bounds[p]:bounds[p + 1]]) for p in range(len(sc.pool_names))]
    return sorted(pools)


def _judge_pool(cfg: FilterConfig, sc: Scan, pool: Pool, encoder: TeacherEncoder, texts: TextTable,
                results: Results, work: Path, progress: Progress) -> dict[str, Any]:
    """Embed, index, search and judge one pool; writes into ``results``."""
    t0 = time.perf_counter()
    store = encoder.store
    keys = np.concatenate([sc.q_key[pool.rows], pool.text_key])
    occ = np.concatenate([sc.row_start[pool.rows], pool.text_occ])
    uniq, first, _ = unique_keys(keys)
    embedded = encoder.embed_missing(uniq, lambda at: texts.take(occ[first[at]]), _sub(progress, 0, 0.5))
    t_embed = time.perf_counter() - t0

    work.mkdir(parents=True, exist_ok=True)
    T, dim = pool.size, store.dim
    chunk = cfg.index.chunk_size
    # In the store's dtype (float16 by default): the same values as a float32 copy (each read is cast to
    # float32 chunk by chunk), at half the disk and half the resident pages (1.5 GB less at 1M examples).
    vectors = np.lib.format.open_memmap(work / "pool.npy", mode="w+", dtype=store.dtype, shape=(T, dim))
    for a in range(0, T, chunk):
        vectors[a:a + chunk] = store.gather(store.locate(pool.text_key[a:a + chunk]))
    vectors.flush()
    q_loc = store.locate(sc.q_key[pool.rows])

    needed = max(cfg.top_k, cfg.negative_rank_end)
    depth = min(cfg.search_depth, T)
    t1 = time.perf_counter()
    searcher = build_search(vectors, cfg.index, depth, work / "index")
    groups = _groups(pool, cfg.search_slack, needed)
    info: dict[str, Any] = {"examples": len(pool.rows), "candidates": T, "kind": searcher.kind, "depth": depth,
                            "blocks": len(pool.block_lo), "blocks_excluded_in_search": int(pool.big.sum()),
                            "embedded": embedded}
    if isinstance(searcher, FaissSearch):
        fixed = cfg.index.ivf_nprobe if searcher.param == "nprobe" else cfg.index.hnsw_ef_search
        sample = _sample_groups(groups, cfg.index.recall_sample, np.random.default_rng(0))
        probe = [(q[np.einsum("ij,ij->i", q, q) > 1e-6], lo, hi, x)
                 for q, lo, hi, x in ((store.gather(q_loc[s]), lo, hi, x) for s, lo, hi, x, _ in sample)]
        probe = [g for g in probe if len(g[0])]
        exact = ExactSearch(vectors, chunk, gpu=use_gpu_for(cfg.index, depth, gpu_count(), cuda_device_count()))
        info["recall"] = tune_recall(searcher, exact, probe, depth, cfg.index.target_recall, fixed=fixed)
        info["lists_on_disk"] = searcher.on_disk
        if cfg.index.kind == "auto" and not approximate_pays(info["recall"], cfg.index.target_recall):
            searcher = exact  # 'auto': the approximate index was no faster at the target recall
            info["kind"] = "flat (ivf not faster at the target recall)"
    t_index = time.perf_counter() - t1

    want_all = np.maximum(0, cfg.num_negatives - pool.kept_given)
    deeper = unembeddable = 0
    done_q = 0
    batch = cfg.index.query_batch
    for local, lo, hi, extras, k in groups:
        for a in range(0, len(local), batch):
            part = local[a:a + batch]
            kk = min(k, T)
            q = store.gather(q_loc[part])
            pos_vec = _gather(vectors, pool.pos_id[part])
            # A text the teacher maps to a zero vector (a static teacher knows none of its tokens, e.g.
            # a script outside its vocabulary) ties with everything: such examples pass unjudged.
            ok = (np.einsum("ij,ij->i", q, q) > 1e-6) & (np.einsum("ij,ij->i", pos_vec, pos_vec) > 1e-6)
            unembeddable += int((~ok).sum())
            part, q, pos_vec = part[ok], q[ok], pos_vec[ok]
            while len(part):
                s, ids = searcher.search(q, kk, lo, hi, extras)
                rows = pool.rows[part]
                j = judge(pool, part, s, ids, q, pos_vec, vectors, sc.qn[rows], sc.pn[rows], want_all[part],
                          cfg.top_k, cfg.negative_rank_start, cfg.negative_rank_end, cfg.positive_margin)
                # Full results but too few competitors (more skipped than the bound allowed): deeper, these only.
                short = (j.competitors < needed) & (ids >= 0).all(1)
                _store(results, pool, rows[~short], j, ~short)
                if not short.any() or kk >= T:
                    if short.any():
                        _store(results, pool, rows[short], j, short)
                    break
                deeper += int(short.sum())
                part, q, pos_vec, kk = part[short], q[short], pos_vec[short], min(2 * kk, T)
            done_q += len(local[a:a + batch])
            progress(0.5 + 0.5 * done_q / max(len(pool.rows), 1), f"pool {pool.name}: judged {done_q}")
    info["searched_deeper"] = deeper
    info["unjudged_zero_vector"] = unembeddable
    info["seconds"] = {"embed": round(t_embed, 2), "index": round(t_index, 2),
                       "search_and_judge": round(time.perf_counter() - t1 - t_index, 2)}
    del vectors
    shutil.rmtree(work, ignore_errors=True)
    return info


def _gather(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    order = np.argsort(ids, kind="stable")
    out = np.empty((len(ids), vectors.shape[1]), np.float32)
    out[order] = vectors[ids[order]]
    return out


def _store(results: Results, pool: Pool, rows: np.ndarray, j, mask: np.ndarray) -> None:
    results.rank[rows] = j.rank[mask]
    results.pos_score[rows] = j.pos_score[mask]
    mined = j.mined[mask][:, :results.mined_occ.shape[1]]
    occ = np.where(mined >= 0, pool.text_occ[np.maximum(mined, 0)], -1)
    results.mined_occ[rows, :occ.shape[1]] = occ
    results.judged[rows] = True


def _groups(pool: Pool, slack: int, needed: int) -> list[tuple[np.ndarray, int, int, Optional[np.ndarray], int]]:
    """Search calls: ``(local rows, excluded id range lo, hi, excluded extras, k)``.

    One call per large block (its members excluded inside the search), one for every other row
    (depth needed + slack), and rows whose skip bound exceeds the slack searched that much deeper."""
    order = np.argsort(pool.block, kind="stable")
    blocks = pool.block[order]
    out = []
    for b in np.flatnonzero(pool.big):
        lo, hi = np.searchsorted(blocks, [b, b + 1])
        rows = order[lo:hi]
        skip = pool.skip_bound[rows]
        out.append((rows, int(pool.block_lo[b]), int(pool.block_hi[b]), pool.extras(b),
                    needed + max(slack, int(skip.max()))))
    small = ~pool.big[pool.block]
    plain = np.flatnonzero(small & (pool.skip_bound <= slack))
    if len(plain):
        out.append((plain, 0, 0, None, needed + slack))
    over = np.flatnonzero(small & (pool.skip_bound > slack))
    for k in np.unique(pool.skip_bound[over]):  # rare: many copies of a text, or a mid-sized block
        rows = over[pool.skip_bound[over] == k]
        out.append((rows, 0, 0, None, needed + int(k)))
    return out


def _sample_groups(groups, n: int, rng) -> list:
    """About ``n`` queries drawn uniformly over all rows, each kept with its search call's exclusion.

    Uniform over rows, not at least one per call: a pool with thousands of large blocks has one search
    call per block, and one query from each made the exact reference search scan the whole pool once
    per block (1,530 scans, 437 s of the filter's 29 min at 1M examples in bench/scale.py)."""
    sizes = np.array([len(g[0]) for g in groups], dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    picks = np.sort(rng.choice(int(bounds[-1]), size=min(n, int(bounds[-1])), replace=False))
    out = []
    for g, (local, lo, hi, extras, k) in enumerate(groups):
        mine = picks[(picks >= bounds[g]) & (picks < bounds[g + 1])] - bounds[g]
        if len(mine):
            out.append((np.sort(local[mine]), lo, hi, extras, k))
    return out


def _write(cfg: FilterConfig, inputs: list[Path], sc: Scan, results: Results, texts: TextTable, out: Path,
           progress: Progress) -> dict[str, Any]:
    """Pass 3: stream the input again into kept/dropped shard folders."""
    drop_types = set(cfg.drop_task_types)
    by = {f: defaultdict(lambda: {"kept": 0, "dropped": 0}) for f in ("task_type", "language", "source")}
    removed_by_source: dict[str, Counter] = defaultdict(Counter)
    mined_total = kept_n = dropped_n = 0
    # Planted wrong pairs (ingest's swap_positives, for experiments): the filter's precision and recall.
    planted = {"planted": 0, "dropped_planted": 0, "dropped_clean": 0}
    r0 = 0
    with ShardWriter(out / "kept.parquet", cfg.rows_per_shard) as kept_w, \
            ShardWriter(out / "dropped.parquet", cfg.rows_per_shard) as dropped_w:
        for batch in read_batches(inputs, cfg.read_batch_size):
            n = batch.num_rows
            rows = np.arange(r0, r0 + n)
            r0 += n
            task = batch.column("task_type").to_pylist()
            source = batch.column("source").to_pylist()
            judged = results.judged[rows]
            keep = ~judged | (results.rank[rows] < cfg.top_k) | np.array([t not in drop_types for t in task], bool)
            negs = batch.column("negatives").to_pylist()
            metas = batch.column("metadata").to_pylist()
            mined_occ = results.mined_occ[rows]
            flat = mined_occ[mined_occ >= 0]
            mined_texts = iter(texts.take(flat)) if len(flat) else iter(())
            new_negs, new_meta = [], []
            for i in range(n):
                row = rows[i]
                reasons = sc.neg_drop[sc.neg_ptr[row]:sc.neg_ptr[row + 1]]
                given = [x for x, why in zip(negs[i], reasons) if why == NEG_KEEP]
                mined = [next(mined_texts) for o in mined_occ[i] if o >= 0]
                meta = json.loads(metas[i] or "{}")
                if meta.get("planted"):
                    planted["planted"] += 1
                    planted["dropped_planted"] += int(not keep[i])
                elif not keep[i]:
                    planted["dropped_clean"] += 1
                gone = Counter(NEG_REASONS[int(w)] for w in reasons if w != NEG_KEEP)
                if gone:
                    meta["negatives_removed"] = dict(gone)
                    removed_by_source[source[i]].update(gone)
                if judged[i]:
                    meta.update(positive_rank=int(results.rank[row]),
                                positive_score=round(float(results.pos_score[row]), 4))
                if keep[i]:
                    if judged[i]:
                        meta["mined_negatives"] = len(mined)
                        mined_total += len(mined)
                    new_negs.append((given + mined)[:max(cfg.num_negatives, len(given))])
                else:
                    new_negs.append(given)
                new_meta.append(json.dumps(meta, sort_keys=True, ensure_ascii=False))
            table = pa.Table.from_batches([batch])
            table = table.set_column(table.schema.get_field_index("negatives"), "negatives",
                                     pa.array(new_negs, pa.list_(pa.string())))
            table = table.set_column(table.schema.get_field_index("metadata"), "metadata",
                                     pa.array(new_meta, pa.string()))
            kept_w.write(table.filter(pa.array(keep)))
            dropped_w.write(table.filter(pa.array(~keep)))
            kept_n += int(keep.sum())
            dropped_n += int((~keep).sum())
            lang = batch.column("language").to_pylist()
            for i in range(n):
                verdict = "kept" if keep[i] else "dropped"
                by["task_type"][task[i]][verdict] += 1
                by["language"][lang[i]][verdict] += 1
                by["source"][source[i]][verdict] += 1
            progress(r0 / max(sc.rows, 1), f"wrote {r0} rows")
    edges = [0, 1, 2, 5, 10, 20, 50, 100]
    judged_ranks = results.rank[results.judged]
    hist = {}
    for lo, hi in zip(edges, edges[1:]):
        c = int(((judged_ranks >= lo) & (judged_ranks < hi)).sum())
        if c:
            hist[f"{lo}-{hi - 1}"] = c
    if (judged_ranks >= edges[-1]).any():
        hist[f">={edges[-1]}"] = int((judged_ranks >= edges[-1]).sum())
    reasons = {NEG_REASONS[int(w)]: int(c) for w, c in zip(*np.unique(sc.neg_drop, return_counts=True))
               if w != NEG_KEEP}
    stats = {"enabled": cfg.enabled, "top_k": cfg.top_k, "kept": kept_n, "dropped": dropped_n,
             "mined_negatives": mined_total, "search_depth": cfg.search_depth,
             "negatives_removed": {k: int(v) for k, v in sorted(reasons.items())},
             "negatives_removed_by_source": {s: dict(c) for s, c in sorted(removed_by_source.items())},
             "by_task_type": {k: dict(v) for k, v in by["task_type"].items()},
             "by_language": {k: dict(v) for k, v in by["language"].items()},
             "by_source": {k: dict(v) for k, v in by["source"].items()},
             "rank_histogram": hist}
    if planted["planted"]:
        tp, n_drop = planted["dropped_planted"], planted["dropped_planted"] + planted["dropped_clean"]
        stats["planted"] = {**planted, "precision": round(tp / n_drop, 4) if n_drop else None,
                            "recall": round(tp / planted["planted"], 4)}
    return {"stats": stats, "kept": kept_w.files, "dropped": dropped_w.files}
