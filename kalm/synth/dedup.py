"""Exact and near-duplicate removal across shards (MinHash LSH from datasketch)."""

from __future__ import annotations

from typing import Any

from kalm.text import shingles as _shingles  # word 3-grams; character bigrams for Chinese/Japanese/Thai


def deduplicate(rows: list[dict[str, Any]], threshold: float, num_perm: int = 64) -> tuple[list[dict], dict[str, int]]:
    """Keep the first of each group of exact or near duplicates (query + positive), in input order."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    seen: set[str] = set()
    kept, counts = [], {"exact_duplicate": 0, "near_duplicate": 0}
    for i, r in enumerate(rows):
        text = f"{r['query']} || {r['positive']}"
        key = " ".join(text.lower().split())
        if key in seen:
            counts["exact_duplicate"] += 1
            continue
        m = MinHash(num_perm=num_perm, seed=1)
        for s in _shingles(text):
            m.update(s.encode("utf-8"))
        if lsh.query(m):
            counts["near_duplicate"] += 1
            continue
        seen.add(key)
        lsh.insert(str(i), m)
        kept.append(r)
    return kept, counts
