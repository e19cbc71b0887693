"""The filter stage: ranking-consistency filtering and hard-negative mining with FAISS."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from kalm.filtering.config import FilterConfig
from kalm.filtering.consistency import judge_pool
from kalm.filtering.embed import TeacherEncoder
from kalm.filtering.index import build_index, search
from kalm.schema import read_examples, write_examples
from kalm.stage import Progress, StageResult, no_progress
from kalm.store import atomic_write_json, hash_outputs

QUERY_FORMAT = "Instruct: {instruction}\nQuery: {query}"


def pool_key(row: dict[str, Any], scope: str) -> str:
    return "all" if scope == "global" else f"{row['task_type']}/{row['source']}"


def run_filter(cfg: FilterConfig, inputs: Sequence[Path], out: Path, cache_dir: Path,
               progress: Optional[Progress] = None) -> StageResult:
    progress = progress or no_progress
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_examples(list(inputs)).to_pylist() if inputs else []
    if not cfg.enabled:
        kept, dropped, ranks, encoder_stats = rows, [], [], {}
    else:
        kept, dropped, ranks, encoder_stats = _filter_rows(cfg, rows, cache_dir, progress)
    kept_path = write_examples(kept, out / "kept.parquet")
    dropped_path = write_examples(dropped, out / "dropped.parquet")
    stats = _stats(kept, dropped, ranks, cfg)
    stats.update(encoder_stats)
    stats_path = atomic_write_json(out / "stats.json", stats)
    progress(1.0, f"kept {len(kept)} of {len(rows)}")
    return StageResult(
        stage="filter", out_dir=out, outputs=[kept_path, dropped_path, stats_path],
        hashes=hash_outputs(out, [kept_path]),
        counts={"input": len(rows), "kept": len(kept), "dropped": len(dropped),
                "mined_negatives": sum(json.loads(r["metadata"]).get("mined_negatives", 0) for r in kept)},
        seconds=time.perf_counter() - start, info={"stats": stats},
    )


def _filter_rows(cfg: FilterConfig, rows: list[dict[str, Any]], cache_dir: Path, progress: Progress):
    encoder = TeacherEncoder(cfg.teacher, cache_dir, cfg.batch_size, cfg.max_seq_length, cfg.runtime)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[pool_key(r, cfg.pool_scope)].append(i)
    kept, dropped, ranks = [], [], []
    for g, (key, members) in enumerate(sorted(groups.items())):
        progress(g / max(len(groups), 1) * 0.95, f"pool {key}: {len(members)} examples")
        group = [rows[i] for i in members]
        pool_texts = list(dict.fromkeys(t for r in group for t in [r["positive"], *r["negatives"]]))
        where = {t: j for j, t in enumerate(pool_texts)}
        queries = [QUERY_FORMAT.format(instruction=r["instruction"], query=r["query"])
                   if cfg.use_instructions and r["instruction"] else r["query"] for r in group]
        pool = encoder.encode(pool_texts)
        q = encoder.encode(queries)
        index = build_index(pool, cfg.index)
        want = [max(0, cfg.num_negatives - len(r["negatives"])) for r in group]
        same_label = _positives_by_label(group, where)
        exclude = [{where[t] for t in r["negatives"]} for r in group]
        also_positive = [same_label.get(_label(r), set()) for r in group]
        # Extra hits make up for candidates skipped as the positive itself, copies of the query
        # and other right answers, so a positive outside the top-k is always seen to be there.
        depth = max(cfg.top_k, cfg.negative_rank_end) + 8 + max(map(len, also_positive), default=0)
        scores, ids = search(index, q, depth, cfg.index.chunk_size)
        judgements = judge_pool(q, pool, pool_texts, [where[r["positive"]] for r in group],
                                [r["query"] for r in group], scores, ids, cfg.top_k, cfg.negative_rank_start,
                                cfg.negative_rank_end, cfg.positive_margin, want, exclude, also_positive)
        for r, j in zip(group, judgements):
            meta = json.loads(r["metadata"] or "{}")
            meta.update(positive_rank=j.rank, positive_score=round(j.positive_score, 4))
            ranks.append(j.rank)
            if j.kept or r["task_type"] not in cfg.drop_task_types:
                mined = [pool_texts[m] for m in j.mined]
                meta["mined_negatives"] = len(mined)
                kept.append({**r, "negatives": (list(r["negatives"]) + mined)[:max(cfg.num_negatives, len(r["negatives"]))],
                             "metadata": json.dumps(meta, sort_keys=True)})
            else:
                dropped.append({**r, "metadata": json.dumps(meta, sort_keys=True)})
    return kept, dropped, ranks, {"embedding_cache": {"hits": encoder.hits, "misses": encoder.misses}}


def _label(row: dict[str, Any]) -> Any:
    return json.loads(row["metadata"] or "{}").get("label")


def _positives_by_label(group: list[dict[str, Any]], where: dict[str, int]) -> dict[Any, set[int]]:
    """Classification data: candidates sharing an example's label are true positives, never its negatives.

    A candidate's label is known when it is some example's positive or query (every text of an
    ingested classification set is the query of one example; negatives carry no label)."""
    out: dict[Any, set[int]] = defaultdict(set)
    for r in group:
        label = _label(r)
        if label is not None:
            out[label].add(where[r["positive"]])
            if r["query"] in where:
                out[label].add(where[r["query"]])
    return out


def _stats(kept: list[dict], dropped: list[dict], ranks: list[int], cfg: FilterConfig) -> dict[str, Any]:
    def by(field: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"kept": 0, "dropped": 0})
        for r in kept:
            out[r[field]]["kept"] += 1
        for r in dropped:
            out[r[field]]["dropped"] += 1
        return dict(out)

    edges = [0, 1, 2, 5, 10, 20, 50, 100]
    hist = Counter()
    for r in ranks:
        label = next((f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:]) if lo <= r < hi), f">={edges[-1]}")
        hist[label] += 1
    return {"enabled": cfg.enabled, "top_k": cfg.top_k, "kept": len(kept), "dropped": len(dropped),
            "by_task_type": by("task_type"), "by_language": by("language"), "by_source": by("source"),
            "rank_histogram": dict(hist)}
