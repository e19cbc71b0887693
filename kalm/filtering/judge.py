"""Ranking consistency and positive-aware hard-negative mining, vectorised over a chunk of queries.

For each example, the teacher ranks the pool's candidates for its query. The positive's rank is
the number of *competitors* scoring strictly above it; competitors are all candidates except the
positive itself, texts equal to the query or the positive after normalisation, and other right
answers (its block, kalm.filtering.pools). The example is kept when that rank is below ``top_k``
(KaLM: the positive must be in the top 50). Hard negatives come from the competitors ranked
[start, end), skipping candidates scoring above ``margin`` x the positive's score (likely false
negatives, NV-Retriever's positive-aware rule, Moreira et al. 2024), near-duplicates of the
positive and the example's own given negatives.

The search returns ``k = max(top_k, end) + slack`` results with large blocks already excluded;
whatever else is skipped fits in the slack (``Pool.skip_bound``), so competitors up to rank
``max(top_k, end)`` are all seen. A rank at or beyond that depth is a lower bound (>= top_k:
dropped either way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kalm.filtering.pools import Pool

NEAR_DUP_COSINE = 0.98


@dataclass
class Judged:
    rank: np.ndarray        # [m] int64
    pos_score: np.ndarray   # [m] float32
    mined: np.ndarray       # [m, w] int64 candidate ids, -1 padded
    competitors: np.ndarray  # [m] competitors seen in the results


def judge(pool: Pool, local: np.ndarray, scores: np.ndarray, ids: np.ndarray, q: np.ndarray, pos_vec: np.ndarray,
          pool_vectors: np.ndarray, qn: np.ndarray, pn: np.ndarray, want: np.ndarray, top_k: int, start: int,
          end: int, margin: float) -> Judged:
    """Judge the pool's examples ``local`` (indices into ``pool.rows``) from their search results.

    scores/ids: [m, k] results (descending; id -1: none); q: [m, D] query vectors; pos_vec: [m, D]
    their positives' vectors; pool_vectors: the pool's [T, D] vectors (memory-mapped); qn/pn: [m]
    normalised-text hashes of query and positive; want: [m] negatives still needed.
    """
    m = len(local)
    pos = pool.pos_id[local]
    block = pool.block[local]
    pos_score = np.einsum("ij,ij->i", q, pos_vec).astype(np.float32)
    valid = ids >= 0
    j = np.where(valid, ids, 0)
    norm = pool.text_norm[j]
    skip = ~valid | (j == pos[:, None]) | (norm == qn[:, None]) | (norm == pn[:, None]) \
        | pool.member(j, np.broadcast_to(block[:, None], j.shape))
    comp = ~skip
    rank = (comp & (scores > pos_score[:, None])).sum(1)
    r = np.cumsum(comp, axis=1) - 1
    window = comp & (r >= start) & (r < end) & (scores <= margin * pos_score[:, None])
    if len(pool.own_codes):
        codes = local[:, None].astype(np.int64) * pool.size + j
        at = np.minimum(np.searchsorted(pool.own_codes, codes), len(pool.own_codes) - 1)
        window &= pool.own_codes[at] != codes
    w = int(want.max()) if m else 0
    mined = np.full((m, max(w, 0)), -1, np.int64)
    if w > 0:
        # Near-duplicates of the positive are checked on the would-be picks only, until none is left.
        checked = np.zeros_like(window)
        while True:
            pick = window & (np.cumsum(window, axis=1) <= want[:, None])
            todo = pick & ~checked
            if not todo.any():
                break
            rows, cols = np.nonzero(todo)
            cos = _rowdot(pool_vectors, j[rows, cols], pos_vec[rows])
            window[rows[cos >= NEAR_DUP_COSINE], cols[cos >= NEAR_DUP_COSINE]] = False
            checked[rows, cols] = True
        rows, cols = np.nonzero(pick)
        slot = np.cumsum(pick, axis=1)[rows, cols] - 1
        mined[rows, slot] = j[rows, cols]
    return Judged(rank=rank, pos_score=pos_score, mined=mined, competitors=comp.sum(1))


def _rowdot(vectors: np.ndarray, ids: np.ndarray, other: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """vectors[ids[i]] . other[i], gathering at most ``chunk`` rows of the memory map at a time."""
    out = np.empty(len(ids), np.float32)
    for a in range(0, len(ids), chunk):
        sel = ids[a:a + chunk]
        order = np.argsort(sel, kind="stable")
        got = np.empty((len(sel), vectors.shape[1]), np.float32)
        got[order] = vectors[sel[order]]
        out[a:a + chunk] = np.einsum("ij,ij->i", got, other[a:a + chunk])
    return out


def brute_force_rank(q: np.ndarray, pool: np.ndarray, norms: list[str], positive: int, query_norm: str,
                     also_positive: frozenset[int] | set[int] = frozenset()) -> int:
    """The positive's rank by exhaustive scoring (reference for tests): q [D], pool [T, D], norms[t]:
    the normalised candidate texts."""
    scores = pool @ q
    pos = scores[positive]
    pn = norms[positive]
    return int(sum(1 for j, s in enumerate(scores)
                   if j != positive and j not in also_positive and norms[j] not in (query_norm, pn) and s > pos))
