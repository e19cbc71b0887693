"""One candidate pool: its distinct candidate texts, and the *blocks* of right answers to exclude.

A pool's candidates are the distinct positives and given negatives of its examples. Examples
that share right answers form one block: rows linked by the same class label (classification,
clustering: metadata ``label``), the same ``group`` (the examples ingest makes of one row with
several positives), or the same query text after normalisation (user case 07: an FAQ question
with several answers). A block's members are the positives of its rows and any of its rows'
query texts that are candidates; for each of its queries they are right answers, so they
neither push the positive down nor are mined as negatives.

Candidate ids are ordered by block, so a block's members are one contiguous id range (plus a
few *extras*: texts that are members of several blocks sit in one block's range and are listed
for the others). Large blocks are then excluded inside the search (an id range and a short id
list); small ones (at most ``slack // 2`` members) are skipped after it, within the search's
fixed slack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kalm.filtering.scan import NEG_KEEP, NEG_OTHER_POSITIVE, Scan
from kalm.filtering.store import search_keys, unique_keys


@dataclass
class Pool:
    name: str
    rows: np.ndarray         # [n] global row indices of the pool's examples
    text_key: np.ndarray     # [T, 2] candidate texts in id order
    text_occ: np.ndarray     # [T] occurrence index of each candidate (to read its text)
    text_norm: np.ndarray    # [T] normalised-text hash
    text_block: np.ndarray   # [T] the block whose id range holds the candidate, -1 for none
    pos_id: np.ndarray       # [n] candidate id of each example's positive
    block: np.ndarray        # [n] block of each example
    block_lo: np.ndarray     # [B] block b's members are ids [lo, hi) ...
    block_hi: np.ndarray     # [B]
    extra_ptr: np.ndarray    # [B+1] ... plus extra_ids[extra_ptr[b]:extra_ptr[b+1]]
    extra_ids: np.ndarray
    extra_codes: np.ndarray  # sorted text * B + block of every extra membership
    own_codes: np.ndarray    # sorted local row * T + text of every kept given negative
    kept_given: np.ndarray   # [n] given negatives each example keeps
    big: np.ndarray          # [B] excluded inside the search
    skip_bound: np.ndarray   # [n] candidates the judge may skip after the search, at most

    @property
    def size(self) -> int:
        return len(self.text_key)

    def block_size(self) -> np.ndarray:
        return (self.block_hi - self.block_lo) + np.diff(self.extra_ptr)

    def extras(self, b: int) -> np.ndarray:
        return self.extra_ids[self.extra_ptr[b]:self.extra_ptr[b + 1]]

    def member(self, text: np.ndarray, block: np.ndarray) -> np.ndarray:
        """Whether each candidate ``text`` is a member of ``block`` (same shapes)."""
        inside = self.text_block[text] == block
        if len(self.extra_codes):
            codes = text.astype(np.int64) * len(self.block_lo) + block
            pos = np.minimum(np.searchsorted(self.extra_codes, codes), len(self.extra_codes) - 1)
            inside |= self.extra_codes[pos] == codes
        return inside


def _components(n: int, keys: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Connected components of n rows linked by equal keys (``[(row indices, key hashes), ...]``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = np.concatenate([r for r, _ in keys])
    vals = np.concatenate([k for _, k in keys])
    uniq, inv = np.unique(vals, return_inverse=True)
    m = n + len(uniq)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, n + inv)), shape=(m, m))
    _, comp = connected_components(graph, directed=False)
    return np.unique(comp[:n], return_inverse=True)[1]


def build_pool(scan: Scan, name: str, rows: np.ndarray, num_negatives: int, slack: int) -> Pool:
    """The pool of ``rows`` (global indices). Marks given negatives that are right answers of their
    own block as ``NEG_OTHER_POSITIVE`` in ``scan.neg_drop``."""
    n = len(rows)
    lo_n, hi_n = scan.neg_ptr[rows], scan.neg_ptr[rows + 1]
    counts = hi_n - lo_n
    neg_idx = np.repeat(lo_n - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
    neg_row = np.repeat(np.arange(n), counts)
    live = scan.neg_drop[neg_idx] == NEG_KEEP
    neg_idx, neg_row = neg_idx[live], neg_row[live]

    keys = np.concatenate([scan.p_key[rows], scan.neg_key[neg_idx]])
    occ = np.concatenate([scan.row_start[rows] + 1, scan.neg_occ[neg_idx]])
    norm = np.concatenate([scan.pn[rows], scan.neg_norm[neg_idx]])
    text_key, first, inverse = unique_keys(keys)
    text_occ, text_norm = occ[first], norm[first]
    pos_id, neg_id = inverse[:n], inverse[n:]
    T = len(text_key)

    # Blocks: rows linked by label, group or normalised query text.
    links = [(np.arange(n), scan.qn[rows])]
    for h in (scan.label[rows], scan.group[rows]):
        has = np.flatnonzero(h)
        links.append((has, h[has]))
    block = _components(n, links) if n else np.zeros(0, np.int64)
    B = int(block.max()) + 1 if n else 0

    # Members: each row's positive, and its query text where that is a candidate.
    q_id = search_keys(np.ascontiguousarray(text_key.T), scan.qraw_key[rows])
    has_q = q_id >= 0
    codes = np.unique(np.concatenate([pos_id * B + block, q_id[has_q] * B + block[has_q]]))
    m_text, m_block = codes // max(B, 1), codes % max(B, 1)
    primary = np.full(T, -1, np.int64)
    firsts = np.ones(len(codes), bool)
    firsts[1:] = m_text[1:] != m_text[:-1]
    primary[m_text[firsts]] = m_block[firsts]  # the smallest block of each member text

    # Ids in block order (non-members first): each block's primaries become one id range.
    order = np.argsort(primary, kind="stable")
    new_id = np.empty(T, np.int64)
    new_id[order] = np.arange(T)
    text_key, text_occ, text_norm, text_block = text_key[order], text_occ[order], text_norm[order], primary[order]
    pos_id, neg_id, m_text = new_id[pos_id], new_id[neg_id], new_id[m_text]
    block_lo = np.searchsorted(text_block, np.arange(B), side="left")
    block_hi = np.searchsorted(text_block, np.arange(B), side="right")
    is_extra = text_block[m_text] != m_block
    e_text, e_block = m_text[is_extra], m_block[is_extra]
    e_order = np.lexsort((e_text, e_block))
    extra_ids = e_text[e_order]
    extra_ptr = np.concatenate([[0], np.cumsum(np.bincount(e_block, minlength=B))]).astype(np.int64)
    extra_codes = np.sort(e_text * B + e_block)

    pool = Pool(name=name, rows=rows, text_key=text_key, text_occ=text_occ, text_norm=text_norm,
                text_block=text_block, pos_id=pos_id, block=block, block_lo=block_lo, block_hi=block_hi,
                extra_ptr=extra_ptr, extra_ids=extra_ids, extra_codes=extra_codes,
                own_codes=np.zeros(0, np.int64), kept_given=np.zeros(n, np.int64),
                big=np.zeros(B, bool), skip_bound=np.zeros(n, np.int64))

    # Given negatives that are right answers of their own block go (user case 07's kind).
    other = pool.member(neg_id, block[neg_row]) if len(neg_id) else np.zeros(0, bool)
    scan.neg_drop[neg_idx[other]] = NEG_OTHER_POSITIVE
    neg_id, neg_row = neg_id[~other], neg_row[~other]
    pool.own_codes = np.unique(neg_row.astype(np.int64) * T + neg_id)
    pool.kept_given = np.bincount(neg_row, minlength=n).astype(np.int64)

    # What the judge may have to skip after the search: small blocks' members, and candidates
    # equal to the query or positive after normalisation.
    size = pool.block_size()
    pool.big = size > slack // 2
    uniq_norm, norm_count = np.unique(text_norm, return_counts=True)

    def dups(h: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(uniq_norm, h), len(uniq_norm) - 1)
        return np.where(uniq_norm[at] == h, norm_count[at], 0)

    pool.skip_bound = np.where(pool.big[block], 0, size[block]) + dups(scan.qn[rows]) + dups(scan.pn[rows])
    return pool
