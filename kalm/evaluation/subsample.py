"""Seeded subsamples of local evaluation tasks, so that many tasks fit one time budget.

MMTEB (Enevoldsen et al., 2025, "MMTEB: Massive Multilingual Text Embedding Benchmark", §2.3)
evaluates downsampled tasks to cut compute: classification test sets stratified to 2,048 texts
(mteb's ``AbsTask.stratified_subsampling``, used here), clustering on a random subset of the
documents (mteb's ``AbsTaskClustering.max_document_to_embed``), retrieval on a reduced corpus.
``max_samples`` (N) caps, per kind (what is embedded can be more: both texts of a pair, a classifier's
train texts, every clustering problem):

==================== ==============================================================================
kind                 what is kept (seeded, the same rows for every model)
==================== ==============================================================================
sts, pair class.     N pairs per split in all, spread evenly over the languages (subsets)
classification       N texts of each evaluated split, stratified by label; train: at most
                     max(2 x samples_per_label, N / labels) per label, so each of mteb's
                     n_experiments still draws its full few-shot sample (from a smaller pool: the
                     experiments overlap more, ~50 % on Banking77 at N=1000, so their mean is noisier)
clustering           N sentences per clustering problem (one problem per language in MasakhaNEWS)
retrieval            queries in random order, each kept while its relevant documents still fit in
                     N/2 of the corpus (so queries with few relevant documents are favoured), plus
                     random other documents up to N in all
reranking            N queries, each with all its candidates
==================== ==============================================================================

Scores on a subsample estimate the full task's; they are not the leaderboard's. Retrieval is the
furthest off: MMTEB keeps each query's top-ranked documents from several models as the reduced
corpus (hard distractors), while random distractors make the task easier (higher nDCG@10). Every
subsampled task says so in its notes ("subsampled: ...") and in the report.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SEED = 0  # one fixed seed: every model (and every run) is scored on the same rows


def _indices(length: int, k: int, seed: int = SEED) -> np.ndarray:
    """``min(k, length)`` of ``range(length)`` chosen uniformly at random (seeded), ascending."""
    if length <= k:
        return np.arange(length)
    return np.sort(np.random.default_rng(seed).choice(length, size=k, replace=False))


def _take(ds, k: int):
    """``k`` rows of a ``datasets.Dataset`` chosen uniformly at random, kept in file order."""
    return ds if len(ds) <= k else ds.select(_indices(len(ds), k).tolist())


def _sample_pairs(task, n: int) -> str:
    """STS and pair classification: ``n`` pairs per split over all subsets."""
    from datasets import DatasetDict

    if isinstance(task.dataset, DatasetDict):
        before = {sp: len(ds) for sp, ds in task.dataset.items()}
        task.dataset = DatasetDict({sp: _take(ds, n) for sp, ds in task.dataset.items()})
        after = {sp: len(ds) for sp, ds in task.dataset.items()}
    else:  # multilingual: {subset: DatasetDict}; n // k each, the first n % k subsets one more (n in all)
        k = max(1, len(task.dataset))
        before, after = {}, {}
        for i, (subset, dd) in enumerate(sorted(task.dataset.items())):
            share = n // k + (i < n % k)
            task.dataset[subset] = DatasetDict({sp: _take(ds, share) for sp, ds in dd.items()})
            for sp in dd:
                before[sp] = before.get(sp, 0) + len(dd[sp])
                after[sp] = after.get(sp, 0) + len(task.dataset[subset][sp])
    return ", ".join(f"{after[sp]:,} of {before[sp]:,} pairs ({sp})" for sp in before)


def _per_label(ds, k: int):
    """At most ``k`` rows of each label (seeded), in file order."""
    labels = np.asarray(ds.with_format("arrow")["label"].to_numpy())  # honours a select()'s indices
    rng = np.random.default_rng(SEED)
    keep = []
    for lab in np.unique(labels):
        rows = np.flatnonzero(labels == lab)
        keep.append(rows if len(rows) <= k else rng.choice(rows, size=k, replace=False))
    return ds.select(np.sort(np.concatenate(keep)).tolist())


def _sample_classification(task, n: int) -> str:
    """``n`` texts of each evaluated split, stratified by label (mteb's own stratified subsampling, as
    MMTEB caps classification test sets), and of the train split at most ``max(2 * samples_per_label,
    n / labels)`` texts per label: each of mteb's ``n_experiments`` still draws its full
    ``samples_per_label`` per label (with fewer, the probe itself would be weaker, not just noisier)."""
    from datasets import DatasetDict

    train = getattr(task, "train_split", "train")
    splits = [sp for sp in task.dataset if sp != train]
    before = {sp: len(task.dataset[sp]) for sp in task.dataset}
    labels = len(set(task.dataset[train]["label"]))
    for sp in splits:
        if n >= labels:  # stratifying needs at least one slot per label
            task.dataset = task.stratified_subsampling(task.dataset, seed=SEED, splits=[sp], n_samples=n)
        else:
            task.dataset = DatasetDict({s: _take(ds, n) if s == sp else ds for s, ds in task.dataset.items()})
    per_label = max(2 * getattr(task, "samples_per_label", 8), math.ceil(n / labels))
    task.dataset[train] = _per_label(task.dataset[train], per_label)
    return ", ".join(f"{len(task.dataset[sp]):,} of {before[sp]:,} texts ({sp})" for sp in splits) + \
        f", {len(task.dataset[train]):,} of {before[train]:,} texts ({train}; <= {per_label} per label)"


def _sample_clustering(task, n: int) -> str:
    """``n`` sentences per problem (a row per problem); a flat layout (a text per row) keeps ``n`` rows."""
    from datasets import DatasetDict

    counts = [0, 0]

    def one(ds):
        if ds and isinstance(ds[0]["sentences"], list):
            rows = []
            for i, row in enumerate(ds):
                keep = _indices(len(row["sentences"]), n, seed=SEED + i)  # a seed per problem
                rows.append({"sentences": [row["sentences"][j] for j in keep],
                             "labels": [row["labels"][j] for j in keep]})
                counts[0] += len(row["sentences"])
                counts[1] += len(keep)
            return ds.from_list(rows, features=ds.features)
        counts[0] += len(ds)
        out = _take(ds, n)
        counts[1] += len(out)
        return out

    if isinstance(task.dataset, DatasetDict):
        task.dataset = DatasetDict({sp: one(ds) for sp, ds in task.dataset.items()})
    else:
        for subset, dd in task.dataset.items():
            task.dataset[subset] = DatasetDict({sp: one(ds) for sp, ds in dd.items()})
    return f"{counts[1]:,} of {counts[0]:,} sentences (at most {n:,} per clustering problem)"


def _sample_retrieval(split: dict[str, Any], n: int) -> str:
    """Queries in random order while their relevant documents fit in ``n // 2``; then random other
    documents up to ``n``. ``split``: mteb's RetrievalSplitData (corpus, queries, relevant_docs)."""
    corpus, queries, qrels = split["corpus"], split["queries"], split["relevant_docs"]
    rng = np.random.default_rng(SEED)
    order = rng.permutation(sorted(qrels)).tolist()
    kept, relevant = [], set()
    for q in order:
        docs = set(qrels[q]) - relevant
        if relevant and len(relevant) + len(docs) > n // 2:
            continue
        kept.append(q)
        relevant |= docs
    doc_ids = corpus["id"]
    position = {d: i for i, d in enumerate(doc_ids)}
    chosen = {position[d] for d in relevant}
    free = np.ones(len(doc_ids), dtype=bool)
    free[list(chosen)] = False
    others = np.flatnonzero(free)
    fill = max(0, min(n - len(chosen), len(others)))
    chosen |= set(rng.choice(others, size=fill, replace=False).tolist()) if fill else set()
    kept_set = set(kept)
    query_rows = [i for i, q in enumerate(queries["id"]) if q in kept_set]
    split["corpus"] = corpus.select(sorted(chosen))
    split["queries"] = queries.select(query_rows)
    split["relevant_docs"] = {q: qrels[q] for q in kept}
    return (f"{len(kept):,} of {len(qrels):,} scored queries, {len(chosen):,} of {len(doc_ids):,} documents "
            f"({len(relevant):,} relevant + random others; easier than the full corpus)")


def _sample_reranking(split: dict[str, Any], n: int) -> str:
    """``n`` queries with all their candidates (mteb 2's reranking layout: top_ranked per query)."""
    queries, top = split["queries"], split["top_ranked"]
    kept_rows = _take(queries, n)
    kept = list(kept_rows["id"])
    docs = {d for q in kept for d in top[q]}
    corpus = split["corpus"]
    split["corpus"] = corpus.select([i for i, d in enumerate(corpus["id"]) if d in docs])
    split["queries"] = kept_rows
    split["relevant_docs"] = {q: split["relevant_docs"][q] for q in kept}
    split["top_ranked"] = {q: top[q] for q in kept}
    return f"{len(kept):,} of {len(queries):,} queries with their candidates"


def subsample_task(task, kind: str, n: int) -> str:
    """Reduce ``task.dataset`` (as ``kalm.evaluation.tasks`` loads it) to the seeded subsample above.

    Returns the note that says what was kept, e.g. ``"subsampled (max_samples=500): 500 of 1,379 pairs
    (test)"``. Raises ``ValueError`` for ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"max_samples must be >= 1, got {n}")
    if kind in ("sts", "pair_classification"):
        what = _sample_pairs(task, n)
    elif kind == "classification":
        what = _sample_classification(task, n)
    elif kind == "clustering":
        what = _sample_clustering(task, n)
    elif kind in ("retrieval", "reranking"):
        sample = _sample_retrieval if kind == "retrieval" else _sample_reranking
        what = "; ".join(sample(split, n) for split in task.dataset["default"].values())
    else:  # pragma: no cover - folder kinds are KINDS
        raise ValueError(f"no subsampling for kind {kind!r}")
    return f"subsampled (max_samples={n:,}, seed {SEED}; not comparable to the leaderboard): {what}"
