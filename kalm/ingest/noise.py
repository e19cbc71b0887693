"""Planted wrong pairs, for measuring the ranking-consistency filter (an experiment knob).

Web-mined training pairs are wrong in a typical way: the positive belongs to another query
(a mis-joined row, a wrong link). :func:`swap_positives` plants exactly that in a known
share of a dataset's examples, so the filter's precision and recall on wrong pairs, and what
filtering them is worth, can be measured (KaLM-Embedding, Hu et al. 2025, section 3.2;
``configs/cpu-levers.yaml``). Every planted example is marked in its metadata
(``planted: "swapped_positive"``, ``original_positive_row``).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

PLANTED_KEY = "planted"
SWAPPED = "swapped_positive"


def swap_positives(table: pa.Table, share: float, seed: int, batch: int = 0) -> tuple[pa.Table, int]:
    """Give ``round(share * rows)`` randomly chosen examples another chosen example's positive.

    Args:
        table: examples in the kalm schema (one batch of a dataset).
        share: in [0, 1); 0 returns ``table`` unchanged.
        seed, batch: the draw is ``numpy.random.default_rng([seed, batch])``: reproducible per batch.

    Returns:
        (table with the swaps, number of examples changed). The chosen rows' positives are rotated
        by one among themselves (no row keeps its own); rows whose new positive is textually
        equal to the old one are not counted as planted (and not marked).
    """
    n = table.num_rows
    k = int(round(share * n))
    if k < 2:
        return table, 0
    rng = np.random.default_rng([seed, batch])
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    positives = table.column("positive").to_pylist()
    metadata = table.column("metadata").to_pylist()
    donors = np.roll(chosen, 1)
    new_pos = list(positives)
    planted = 0
    for row, donor in zip(chosen.tolist(), donors.tolist()):
        if positives[donor] == positives[row]:
            continue
        new_pos[row] = positives[donor]
        meta = json.loads(metadata[row] or "{}")
        meta.update({PLANTED_KEY: SWAPPED, "original_positive_row": int(row)})
        metadata[row] = json.dumps(meta, sort_keys=True, ensure_ascii=False)
        planted += 1
    table = table.set_column(table.schema.get_field_index("positive"), "positive", pa.array(new_pos, pa.string()))
    table = table.set_column(table.schema.get_field_index("metadata"), "metadata", pa.array(metadata, pa.string()))
    return table, planted
