"""Deduplication across every dataset of the ingest stage, in bounded memory.

Two examples are duplicates when their query and positive are equal after :func:`kalm.text.fold`
(``exact_duplicate``), or when their queries are near-duplicates *and* their positives are
(``near_duplicate``): MinHash of :func:`kalm.text.shingles` (word 3-grams, character bigrams for
unspaced scripts), LSH bands over query and positive together. A band matches with probability
``(J_query * J_positive) ** r``, so the band layout is datasketch ``MinHashLSH``'s for the
threshold ``threshold ** 2`` on the product (both Jaccards around ``threshold``). Both sides
count: two different queries answered by the same long passage (BEIR qrels) are not duplicates.
A shared band only makes a candidate: it is confirmed when the query Jaccard and the positive
Jaccard, estimated from 8-bit MinHash sketches (b-bit MinHash, Li & Koenig 2010), are both
>= ``threshold`` (unconfirmed LSH candidates are frequent among short texts: "明天是什么日子" and
"今天是什么日子" share most bigrams). The first occurrence is kept, in dataset order then row order.

Memory (measured in tests/test_ingest_scale.py): per kept example 8 bytes of exact key,
``12 * b`` bytes of band keys and ids and ``2 * num_perm`` bytes of sketch -- at ``num_perm=64``,
threshold 0.8 (``b=10, r=6``): 256 bytes per example, ~256 MB per million, whatever the text
lengths (datasketch's dict-based ``MinHashLSH`` keeps a Python dict entry per example and band
and a MinHash object of ``num_perm`` 4-byte values per example).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.ingest.config import DedupConfig
from kalm.ingest.fields import FIRST_ROWS, SourceStats, row_labels
from kalm.minhash import BandIndex, HashSet64, MinHasher, band_keys, hash64, jaccard8, lsh_bands, sketch8
from kalm.text import fold_array


class Deduplicator:
    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.hasher = MinHasher(cfg.num_perm)
        self.bands, self.rows = lsh_bands(cfg.threshold ** 2, cfg.num_perm)
        self._exact = HashSet64()
        self._near = BandIndex()
        self.kept = 0
        self.removed: dict[str, int] = {"exact_duplicate": 0, "near_duplicate": 0}

    def keys_and_sketches(self, sq: np.ndarray, sp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[n, b]`` band keys (band ``i``: rows ``i*r .. i*r+r-1`` of the query's and the positive's
        MinHash) and ``[n, 2 * num_perm]`` sketches (query's, then positive's)."""
        n, b, r = len(sq), self.bands, self.rows
        both = np.concatenate([sq[:, :b * r].reshape(n, b, r), sp[:, :b * r].reshape(n, b, r)], axis=2)
        return band_keys(both.reshape(n, b * 2 * r), b, 2 * r), np.concatenate([sketch8(sq), sketch8(sp)], axis=1)

    def _similar(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        half = self.cfg.num_perm
        return (jaccard8(a[:, :half], b[:, :half]) >= self.cfg.threshold) & \
            (jaccard8(a[:, half:], b[:, half:]) >= self.cfg.threshold)

    def apply(self, table: pa.Table, stats: SourceStats,
              sigs: Optional[tuple[np.ndarray, np.ndarray]] = None) -> pa.Table:
        """``table`` without duplicates of earlier examples (this batch's or earlier datasets');
        ``sigs``: the query and positive MinHash signatures when already computed."""
        n = table.num_rows
        if n == 0:
            return table
        fq = fold_array(table.column("query").combine_chunks())
        fp = fold_array(table.column("positive").combine_chunks())
        keys = hash64(pc.binary_join_element_wise(fq, fp, "\x1f").to_pylist())
        exact = self._exact.contains(keys)
        _, first = np.unique(keys, return_index=True)
        repeat = np.ones(n, dtype=bool)
        repeat[first] = False
        exact |= repeat
        near = np.zeros(n, dtype=bool)
        todo = np.flatnonzero(~exact)
        if len(todo):
            if sigs is not None:
                sq, sp = sigs[0][todo], sigs[1][todo]
            else:
                sub = table.take(pa.array(todo))
                sq = self.hasher.text_signatures(sub.column("query"))
                sp = self.hasher.text_signatures(sub.column("positive"))
            bands, sketches = self.keys_and_sketches(sq, sp)
            rows, items = self._near.candidates(bands)
            dup = np.zeros(len(todo), dtype=bool)
            if len(rows):
                ok = self._similar(sketches[rows], self._near.sketches(items))
                dup[rows[ok]] = True
            dup |= self._within_batch(bands, sketches, dup)
            near[todo] = dup
            self._near.add(bands[~dup], sketches[~dup])
        kept = ~exact & ~near
        self._exact.add(keys[kept])
        for reason, mask in (("exact_duplicate", exact), ("near_duplicate", near)):
            c = int(mask.sum())
            if c:
                stats.deduplicated[reason] += c
                self.removed[reason] += c
                stats.note_rows(f"deduplicated:{reason}", row_labels(table, np.flatnonzero(mask)[:FIRST_ROWS]))
        self.kept += int(kept.sum())
        return table.filter(pa.array(kept)) if not kept.all() else table

    def _within_batch(self, bands: np.ndarray, sketches: np.ndarray, dup: np.ndarray) -> np.ndarray:
        """Rows similar to an earlier *kept* row of the same batch (sequential: a row dropped as a
        duplicate does not make later rows duplicates)."""
        n, b = bands.shape
        flat = bands.ravel()
        order = np.argsort(flat, kind="stable")
        sk = flat[order]
        same = np.zeros(len(sk), dtype=bool)
        same[1:] = sk[1:] == sk[:-1]
        if not same.any():
            return np.zeros(n, dtype=bool)
        in_run = same.copy()
        in_run[:-1] |= same[1:]
        members: dict[int, list[int]] = defaultdict(list)  # band key -> rows, ascending
        for pos in np.flatnonzero(in_run):
            members[int(sk[pos])].append(int(order[pos]) // b)
        mates: dict[int, set[int]] = defaultdict(set)
        for rows in members.values():
            for k, r in enumerate(rows):
                mates[r].update(rows[:k])
        out = np.zeros(n, dtype=bool)
        dropped = dup.copy()
        for r in sorted(mates):
            if dropped[r] or not mates[r]:
                continue
            earlier = np.array(sorted(m for m in mates[r] if not dropped[m]), dtype=np.int64)
            if len(earlier) and self._similar(np.repeat(sketches[r:r + 1], len(earlier), 0), sketches[earlier]).any():
                out[r] = dropped[r] = True
        return out

    def report(self) -> dict[str, Any]:
        return {"enabled": True, "threshold": self.cfg.threshold, "num_perm": self.cfg.num_perm,
                "bands": self.bands, "rows_per_band": self.rows, "kept": self.kept, "removed": self.removed,
                "index_bytes": self._exact.nbytes + self._near.nbytes}


def dedup_report(d: Optional[Deduplicator], cfg: DedupConfig) -> dict[str, Any]:
    return d.report() if d is not None else {"enabled": False}
