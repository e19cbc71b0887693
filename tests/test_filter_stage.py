"""Ranking-consistency filter and hard-negative mining on real STS Benchmark pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kalm.filtering.config import FilterConfig
from kalm.filtering.consistency import NEAR_DUP_COSINE, brute_force_rank
from kalm.filtering.embed import TeacherEncoder
from kalm.filtering.stage import run_filter
from kalm.schema import Example, read_examples, write_examples


@pytest.fixture(scope="module")
def sts_examples(shared_data, tmp_path_factory):
    rows = [json.loads(line) for line in (shared_data / "stsb_en" / "train.jsonl").read_text().splitlines()]
    pairs = [r for r in rows if float(r["score"]) >= 4.0][:160]
    examples = [Example(task_type="sts", query=r["sentence1"], positive=r["sentence2"], source="stsb")
                for r in pairs if r["sentence1"].strip() != r["sentence2"].strip()]
    path = tmp_path_factory.mktemp("in") / "sts.parquet"
    write_examples(examples, path)
    return path


def test_ranks_match_brute_force_and_mining_is_safe(sts_examples, tmp_path, minilm_ref):
    cfg = FilterConfig(teacher=minilm_ref, top_k=3, num_negatives=3, negative_rank_start=2, negative_rank_end=20,
                       use_instructions=False)
    result = run_filter(cfg, [sts_examples], tmp_path / "out", tmp_path / "cache")
    kept = read_examples(tmp_path / "out" / "kept.parquet").to_pylist()
    dropped = read_examples(tmp_path / "out" / "dropped.parquet").to_pylist()
    assert result.counts["kept"] == len(kept) and len(kept) + len(dropped) == result.counts["input"]
    assert kept and dropped  # top-3 over ~150 candidates keeps most, not all

    encoder = TeacherEncoder(minilm_ref, tmp_path / "cache")
    rows = kept + dropped
    pool_texts = list(dict.fromkeys(r["positive"] for r in read_examples(sts_examples).to_pylist()))
    pool = encoder.encode(pool_texts)
    for r in rows:
        q = encoder.encode([r["query"]])[0]
        expected = brute_force_rank(q, pool, pool_texts, pool_texts.index(r["positive"]), r["query"])
        meta = json.loads(r["metadata"])
        assert meta["positive_rank"] == expected, r["query"]
        assert (expected < cfg.top_k) == (r in kept)
    for r in kept:
        assert r["positive"] not in r["negatives"] and r["query"] not in r["negatives"]
        p = encoder.encode([r["positive"]])[0]
        for n in r["negatives"]:
            assert float(encoder.encode([n])[0] @ p) < NEAR_DUP_COSINE


def test_rerun_reuses_the_embedding_cache(sts_examples, tmp_path, minilm_ref):
    cfg = FilterConfig(teacher=minilm_ref, top_k=5, use_instructions=False)
    first = run_filter(cfg, [sts_examples], tmp_path / "a", tmp_path / "cache")
    second = run_filter(cfg, [sts_examples], tmp_path / "b", tmp_path / "cache")
    assert first.info["stats"]["embedding_cache"]["misses"] > 0
    assert second.info["stats"]["embedding_cache"]["misses"] == 0
    assert first.hashes == second.hashes


def test_disabled_filter_passes_everything_through(sts_examples, tmp_path, minilm_ref):
    result = run_filter(FilterConfig(enabled=False), [sts_examples], tmp_path / "out", tmp_path / "cache")
    assert result.counts["kept"] == result.counts["input"] and result.counts["dropped"] == 0


def test_index_kinds_agree_with_exact_search():
    from kalm.filtering.config import IndexOptions
    from kalm.filtering.index import build_index, search

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:50]
    _, exact = search(build_index(x, IndexOptions(kind="flat")), q, 10)
    for kind in ("ivf", "hnsw"):
        _, approx = search(build_index(x, IndexOptions(kind=kind, ivf_nprobe=64)), q, 10)
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
        assert recall >= 0.9, (kind, recall)


def test_classification_ranks_ignore_same_label_texts(shared_data, tmp_path, minilm_ref):
    """Banking77: other texts of the example's label are right answers too. They must neither
    push its positive down (that dropped ~70 % of the demo's Banking77 examples at top-20)
    nor be mined as its negatives."""
    import random

    from kalm.ingest.config import DatasetSource
    from kalm.ingest.mapping import map_classification

    rows = [json.loads(line) for line in (shared_data / "banking77" / "train.jsonl").read_text().splitlines()]
    labels = sorted({r["label"] for r in rows})[:12]
    rows = [r for r in rows if r["label"] in labels][:400]
    src = DatasetSource(name="banking77-train", path=str(shared_data / "banking77" / "train.jsonl"),
                        format="classification")
    path = tmp_path / "banking.parquet"
    write_examples(map_classification(src, rows, random.Random(0)), path)
    cfg = FilterConfig(teacher=minilm_ref, top_k=5, num_negatives=3, negative_rank_start=0, negative_rank_end=30,
                       use_instructions=False, drop_task_types=["classification"])
    run_filter(cfg, [path], tmp_path / "out", tmp_path / "cache")
    kept = read_examples(tmp_path / "out" / "kept.parquet").to_pylist()
    dropped = read_examples(tmp_path / "out" / "dropped.parquet").to_pylist()

    inputs = read_examples(path).to_pylist()
    pool_texts = list(dict.fromkeys(t for r in inputs for t in [r["positive"], *r["negatives"]]))
    known_labels: dict[str, set[str]] = {}
    for r in inputs:
        for text in (r["positive"], r["query"]):
            known_labels.setdefault(text, set()).add(json.loads(r["metadata"])["label"])
    encoder = TeacherEncoder(minilm_ref, tmp_path / "cache")
    pool = encoder.encode(pool_texts)
    naive_kept = 0
    for r in kept + dropped:
        label = json.loads(r["metadata"])["label"]
        same = {j for j, t in enumerate(pool_texts) if label in known_labels.get(t, set())}
        q = encoder.encode([r["query"]])[0]
        p = pool_texts.index(r["positive"])
        exact = brute_force_rank(q, pool, pool_texts, p, r["query"], same)
        rank = json.loads(r["metadata"])["positive_rank"]
        # Exact within the searched depth; beyond it, a lower bound that is still >= top_k.
        assert rank == exact if exact < cfg.negative_rank_end else cfg.top_k <= rank <= exact
        assert (r in kept) == (exact < cfg.top_k)
        naive_kept += brute_force_rank(q, pool, pool_texts, p, r["query"]) < cfg.top_k
    assert len(kept) > naive_kept  # same-label texts no longer count against the positive
    for r in kept:
        label = json.loads(r["metadata"])["label"]
        mined = r["negatives"][1:]  # the first is the ingested other-label text
        assert mined and not any(label in known_labels.get(n, set()) for n in mined)

    # By default label-derived pairs are ranked and mined, never dropped.
    default = run_filter(cfg.model_copy(update={"drop_task_types": FilterConfig().drop_task_types}), [path],
                         tmp_path / "default", tmp_path / "cache")
    assert default.counts["dropped"] == 0 and default.counts["kept"] == len(inputs)
    assert default.counts["mined_negatives"] > 0
