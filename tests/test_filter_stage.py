"""The streamed filter stage on real data: ranks against brute force, same-label exclusion, shards, cache."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from kalm.filtering.config import FilterConfig, IndexOptions
from kalm.filtering.embed import TeacherEncoder
from kalm.filtering.judge import NEAR_DUP_COSINE, brute_force_rank
from kalm.filtering.scan import norm_text
from kalm.filtering.stage import run_filter
from kalm.filtering.store import text_keys
from kalm.schema import Example, ShardWriter, read_examples, write_examples


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
                       use_instructions=False, rows_per_shard=50)
    result = run_filter(cfg, [sts_examples], tmp_path / "out", tmp_path / "cache")
    # Shard folders that users still read as one table.
    assert (tmp_path / "out" / "kept.parquet").is_dir() and len(list((tmp_path / "out" / "kept.parquet").glob("part-*.parquet"))) > 1
    kept = pq.read_table(tmp_path / "out" / "kept.parquet").to_pylist()
    dropped = read_examples(tmp_path / "out" / "dropped.parquet").to_pylist()
    assert result.counts["kept"] == len(kept) and len(kept) + len(dropped) == result.counts["input"]
    assert kept and dropped  # top-3 over ~150 candidates keeps most, not all
    assert {p.parent.name for p in result.example_files()} == {"kept.parquet"}

    encoder = TeacherEncoder(minilm_ref, tmp_path / "cache")
    inputs = read_examples(sts_examples).to_pylist()
    pool_texts = list(dict.fromkeys(r["positive"] for r in inputs))
    pool = encoder.encode(pool_texts)
    norms = [norm_text(t) for t in pool_texts]
    # Rows with the same query text share their answers (user case 07): right answers, not competitors.
    answers: dict[str, set[int]] = defaultdict(set)
    for r in inputs:
        answers[norm_text(r["query"])].add(pool_texts.index(r["positive"]))
    assert any(len(a) > 1 for a in answers.values())  # STS-B has such queries
    for r in kept + dropped:
        q = encoder.encode([r["query"]])[0]
        expected = brute_force_rank(q, pool, norms, pool_texts.index(r["positive"]), norm_text(r["query"]),
                                    answers[norm_text(r["query"])])
        meta = json.loads(r["metadata"])
        assert meta["positive_rank"] == expected, r["query"]
        assert (expected < cfg.top_k) == (r in kept)
    for r in kept:
        assert r["positive"] not in r["negatives"] and r["query"] not in r["negatives"]
        p = encoder.encode([r["positive"]])[0]
        for n in r["negatives"]:
            assert float(encoder.encode([n])[0] @ p) < NEAR_DUP_COSINE


def test_rerun_reuses_the_embedding_store(sts_examples, tmp_path, minilm_ref):
    cfg = FilterConfig(teacher=minilm_ref, top_k=5, use_instructions=False)
    first = run_filter(cfg, [sts_examples], tmp_path / "a", tmp_path / "cache")
    second = run_filter(cfg, [sts_examples], tmp_path / "b", tmp_path / "cache")
    assert first.info["stats"]["embedding_cache"]["misses"] > 0
    assert second.info["stats"]["embedding_cache"]["misses"] == 0
    assert first.hashes == second.hashes


def test_query_batches_and_pool_chunks_do_not_change_the_output(sts_examples, tmp_path, minilm_ref):
    """``index.query_batch`` and ``index.chunk_size`` bound memory only: ~150 queries in batches of 16
    against a pool read in chunks of 37 give the same shards, byte for byte, as one batch and one chunk."""
    cfg = FilterConfig(teacher=minilm_ref, top_k=5, num_negatives=3, negative_rank_start=2, negative_rank_end=20,
                       use_instructions=False)
    whole = run_filter(cfg, [sts_examples], tmp_path / "whole", tmp_path / "cache")
    small = cfg.model_copy(update={"index": IndexOptions(chunk_size=37, query_batch=16)})
    batched = run_filter(small, [sts_examples], tmp_path / "batched", tmp_path / "cache")
    pool = batched.info["stats"]["pools"]["sts/stsb"]
    assert pool["kind"] == "flat" and pool["examples"] > 16 * 8 and pool["candidates"] > 37 * 3
    assert whole.counts == batched.counts and whole.counts["mined_negatives"] > 0
    assert whole.hashes == batched.hashes


def test_disabled_filter_passes_everything_through(sts_examples, tmp_path, minilm_ref):
    result = run_filter(FilterConfig(enabled=False), [sts_examples], tmp_path / "out", tmp_path / "cache")
    assert result.counts["kept"] == result.counts["input"] and result.counts["dropped"] == 0
    assert not (tmp_path / "cache").exists()  # no teacher loaded, nothing embedded


# ---------------------------------------------------------------- Banking77: all 10k rows
def _classification_examples(texts_labels: list[tuple[str, str]], source: str, seed: int = 0) -> list[Example]:
    """Like ingest's classification mapper: query = a text, positive = another text of its label,
    negative = a text of another label."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, label in texts_labels:
        by_label[label].append(text)
    labels = sorted(by_label)
    out = []
    for text, label in texts_labels:
        same = by_label[label]
        positive = text
        while positive == text:
            positive = same[rng.randrange(len(same))]
        other = by_label[rng.choice([x for x in labels if x != label])]
        out.append(Example(task_type="classification", query=text, positive=positive,
                           negatives=[other[rng.randrange(len(other))]], source=source, metadata={"label": label}))
    return out


def _blocks(rows: list[dict]) -> list[int]:
    """Reference blocks (union-find): rows sharing a label or a normalised query text."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    seen: dict[tuple, int] = {}
    for i, r in enumerate(rows):
        for key in (("label", json.loads(r["metadata"]).get("label")), ("q", norm_text(r["query"]))):
            if key[1] is None:
                continue
            if key in seen:
                parent[find(i)] = find(seen[key])
            else:
                seen[key] = i
    return [find(i) for i in range(len(rows))]


def _reference_ranks(rows: list[dict], vec: dict[str, np.ndarray], tol: float) -> tuple[np.ndarray, ...]:
    """Brute-force ranks on float32 vectors with same-block exclusion: (exact, lower, upper, naive) where
    lower/upper count competitors above the positive by more than ``tol`` / within ``tol`` (ties), and
    naive lets same-block texts compete (the ranks before same-label exclusion)."""
    cands = list(dict.fromkeys(t for r in rows for t in [r["positive"], *r["negatives"]]))
    cid = {t: i for i, t in enumerate(cands)}
    C = np.stack([vec[t] for t in cands])
    cnorm = np.array([hash(norm_text(t)) for t in cands])
    block = _blocks(rows)
    members: dict[int, set[int]] = defaultdict(set)
    for r, b in zip(rows, block):
        members[b].add(cid[r["positive"]])
        if r["query"] in cid:
            members[b].add(cid[r["query"]])
    exact, lower, upper, naive = (np.zeros(len(rows), np.int64) for _ in range(4))
    for a in range(0, len(rows), 1000):
        part = rows[a:a + 1000]
        S = np.stack([vec[r["query"]] for r in part]) @ C.T
        for i, r in enumerate(part):
            p = cid[r["positive"]]
            mask = np.ones(len(cands), bool)
            mask[list(members[block[a + i]])] = False
            mask[p] = False
            dup = (cnorm == hash(norm_text(r["query"]))) | (cnorm == cnorm[p])
            s, sp = S[i][mask & ~dup], S[i, p]
            exact[a + i], lower[a + i], upper[a + i] = (s > sp).sum(), (s > sp + tol).sum(), (s > sp - tol).sum()
            naive[a + i] = (S[i][~dup] > sp).sum()
    return exact, lower, upper, naive


@pytest.mark.slow
def test_banking77_ranks_equal_brute_force_with_same_label_exclusion(shared_data, tmp_path, minilm_ref):
    """All 10k Banking77 train rows, two input shards. Other texts of an example's label are right
    answers: excluded inside the search, they neither push its positive down nor are mined. Vectors
    are stored as float16: ranks equal float32 brute force up to ties within the float16 error."""
    rows = [json.loads(line) for line in (shared_data / "banking77" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 10_003
    examples = _classification_examples([(r["text"], r["label"]) for r in rows], "banking77")
    with ShardWriter(tmp_path / "in.parquet", rows_per_shard=6000) as w:
        w.write(examples)
    inputs = read_examples(tmp_path / "in.parquet").to_pylist()
    cfg = FilterConfig(teacher=minilm_ref, top_k=5, num_negatives=3, negative_rank_start=0, negative_rank_end=30,
                       use_instructions=False, drop_task_types=["classification"])

    # float32 reference vectors, and the same vectors in the float16 store the filter reads.
    texts = list(dict.fromkeys(t for r in inputs for t in [r["query"], r["positive"], *r["negatives"]]))
    ref = TeacherEncoder(minilm_ref, tmp_path / "cache", store_dtype="float32").encode(texts)
    TeacherEncoder(minilm_ref, tmp_path / "cache", store_dtype="float16").store.append(text_keys(texts), ref)
    result = run_filter(cfg, [tmp_path / "in.parquet"], tmp_path / "out", tmp_path / "cache")
    stats = result.info["stats"]
    assert stats["embedding_cache"]["misses"] == 0
    pool = stats["pools"]["classification/banking77"]
    assert pool["kind"] == "flat" and pool["depth"] == cfg.search_depth and pool["searched_deeper"] == 0
    assert pool["blocks_excluded_in_search"] >= 70  # the labels (77, a few merged by shared texts)

    out = {r["id"]: r for r in read_examples([tmp_path / "out" / "kept.parquet",
                                              tmp_path / "out" / "dropped.parquet"]).to_pylist()}
    kept_ids = {r["id"] for r in read_examples(tmp_path / "out" / "kept.parquet").to_pylist()}
    ordered = [out[r["id"]] for r in inputs]
    vec = dict(zip(texts, ref))
    tol = 2e-3  # |float16 score - float32 score| <= ~1e-3 for unit vectors
    exact, lower, upper, naive = _reference_ranks(inputs, vec, tol)
    needed = max(cfg.top_k, cfg.negative_rank_end)
    ours = np.array([json.loads(r["metadata"])["positive_rank"] for r in ordered])
    seen = exact < needed
    # Within the depth read: equal up to float16 ties; beyond it, a lower bound that is >= needed.
    assert np.all((lower[seen] <= ours[seen]) & (ours[seen] <= upper[seen]))
    assert (ours[seen] == exact[seen]).mean() > 0.99
    assert np.all(ours[~seen] >= np.minimum(lower[~seen], needed))
    decided = np.array([r["id"] in kept_ids for r in ordered])
    assert np.array_equal(decided, ours < cfg.top_k)
    tie = (lower < cfg.top_k) & (upper >= cfg.top_k)
    assert np.array_equal(decided[~tie], (exact < cfg.top_k)[~tie]) and tie.mean() < 0.01
    # Letting same-label texts compete would drop most of the examples kept.
    assert decided.mean() > (naive < cfg.top_k).mean() + 0.1

    label_of: dict[str, set] = defaultdict(set)
    for r in inputs:
        label_of[r["query"]].add(json.loads(r["metadata"])["label"])
        label_of[r["positive"]].add(json.loads(r["metadata"])["label"])
    mined = 0
    for r in ordered:
        if r["id"] not in kept_ids:
            continue
        label = json.loads(r["metadata"])["label"]
        assert len(r["negatives"]) <= cfg.num_negatives
        pos = vec[r["positive"]]
        for n in r["negatives"][1:]:  # the first is the given other-label text
            mined += 1
            assert label not in label_of.get(n, set()), (r["query"], n)
            assert norm_text(n) not in (norm_text(r["query"]), norm_text(r["positive"]))
            assert float(vec[n] @ vec[r["query"]]) <= cfg.positive_margin * float(pos @ vec[r["query"]]) + tol
    # Nearly every kept example gets its two mined negatives (num_negatives 3, one given); the few that
    # do not had fewer candidates under the positive margin in the mining window.
    assert mined == stats["mined_negatives"] >= 0.99 * 2 * len(kept_ids)


def test_label_derived_pairs_are_ranked_and_mined_not_dropped(shared_data, tmp_path, minilm_ref):
    rows = [json.loads(line) for line in (shared_data / "banking77" / "train.jsonl").read_text().splitlines()]
    labels = sorted({r["label"] for r in rows})[:12]
    rows = [r for r in rows if r["label"] in labels][:400]
    write_examples(_classification_examples([(r["text"], r["label"]) for r in rows], "b77"), tmp_path / "b.parquet")
    cfg = FilterConfig(teacher=minilm_ref, top_k=5, num_negatives=3, negative_rank_start=0, negative_rank_end=30,
                       use_instructions=False)
    result = run_filter(cfg, [tmp_path / "b.parquet"], tmp_path / "out", tmp_path / "cache")
    assert result.counts["dropped"] == 0 and result.counts["kept"] == len(rows)
    assert result.counts["mined_negatives"] > 0


def test_filter_precision_and_recall_on_planted_wrong_pairs(shared_data, tmp_path, minilm_ref):
    """Ingest plants a known share of wrong pairs (swap_positives, as in configs/cpu-levers.yaml); the
    filter's stats report how many it dropped (recall) and how many of its drops were planted
    (precision), counted from the examples' ``planted`` metadata."""
    from kalm.ingest.config import DatasetSource, IngestConfig
    from kalm.ingest.stage import run_ingest

    src = DatasetSource(name="stsb", path=shared_data / "stsb_en" / "train.jsonl", format="sts", min_score=4.0,
                        max_rows=300, swap_positives=0.25, seed=5)
    run_ingest(IngestConfig(datasets=[src], dedup={"enabled": False}, decontamination={"enabled": False}),
               tmp_path / "ingest")
    cfg = FilterConfig(teacher=minilm_ref, top_k=5, num_negatives=1, use_instructions=False)
    result = run_filter(cfg, [tmp_path / "ingest" / "stsb.parquet"], tmp_path / "out", tmp_path / "cache")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    p = stats["planted"]
    dropped = pq.read_table(tmp_path / "out" / "dropped.parquet").to_pylist()
    planted_dropped = sum(bool(json.loads(r["metadata"]).get("planted")) for r in dropped)
    assert p["dropped_planted"] == planted_dropped and p["dropped_clean"] == len(dropped) - planted_dropped
    assert 60 <= p["planted"] <= 90 and p["recall"] == round(planted_dropped / p["planted"], 4)
    assert p["precision"] == round(planted_dropped / len(dropped), 4)
    # A random other pair's positive almost never ranks top-5 among ~300: MiniLM finds nearly all.
    assert p["recall"] >= 0.9 and p["precision"] >= 0.5, p
    assert result.counts["dropped"] == len(dropped)
