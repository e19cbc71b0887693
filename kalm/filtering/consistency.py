"""Ranking consistency and positive-aware hard-negative mining over one candidate pool.

For each example, the teacher ranks the pool's candidate documents for the example's query.
The positive's rank is the number of candidates (other than itself, texts identical to
the query, and other positives: for classification, texts sharing the example's label)
scoring strictly above it. The example is kept when that rank is below ``top_k``
(KaLM: the positive must be in the top 50). Hard negatives come from the same ranking, ranks
[start, end), skipping candidates scoring above ``margin`` x the positive's score (likely
false negatives, NV-Retriever's positive-aware rule) and near-duplicates of the positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NEAR_DUP_COSINE = 0.98


@dataclass
class Judgement:
    rank: int
    kept: bool
    positive_score: float
    mined: list[int] = field(default_factory=list)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def judge_pool(q: np.ndarray, pool: np.ndarray, pool_texts: list[str], positives: list[int], queries: list[str],
               scores: np.ndarray, ids: np.ndarray, top_k: int, start: int, end: int, margin: float,
               want: list[int], exclude: list[set[int]],
               also_positive: list[set[int]] | None = None) -> list[Judgement]:
    """Judge every example of one pool.

    q: [n, D] query vectors; pool: [m, D] candidate vectors; positives[i]: pool index of example
    i's positive; scores/ids: the index's top results for each query (descending);
    want[i]: negatives still needed; exclude[i]: pool indices never to mine (its own negatives);
    also_positive[i]: other correct answers for example i (classification: same-label texts).
    Those neither push the positive down nor become negatives: counting them would drop most
    classification examples for having many right answers rather than a wrong one.
    """
    norm_pool = [_norm(t) for t in pool_texts]
    out = []
    for i in range(len(q)):
        p = positives[i]
        pos_score = float(q[i] @ pool[p])
        qn = _norm(queries[i])
        rank = 0
        mined: list[int] = []
        r = 0  # rank among candidates that compete with the positive
        for s, j in zip(scores[i], ids[i]):
            if j < 0 or j == p or norm_pool[j] == qn or norm_pool[j] == norm_pool[p]:
                continue
            if also_positive is not None and j in also_positive[i]:
                continue
            if s > pos_score:
                rank += 1
            if start <= r < end and len(mined) < want[i] and j not in exclude[i] and s <= margin * pos_score \
                    and float(pool[j] @ pool[p]) < NEAR_DUP_COSINE:
                mined.append(int(j))
            r += 1
        out.append(Judgement(rank=rank, kept=rank < top_k, positive_score=pos_score, mined=mined))
    return out


def brute_force_rank(q: np.ndarray, pool: np.ndarray, pool_texts: list[str], positive: int, query: str,
                     also_positive: frozenset[int] | set[int] = frozenset()) -> int:
    """The positive's rank by exhaustive scoring (reference for tests)."""
    scores = pool @ q
    pos = scores[positive]
    qn, pn = _norm(query), _norm(pool_texts[positive])
    return int(sum(1 for j, s in enumerate(scores)
                   if j != positive and j not in also_positive and _norm(pool_texts[j]) not in (qn, pn) and s > pos))
