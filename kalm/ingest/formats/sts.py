"""``sts``: scored sentence pairs; pairs scoring at least ``min_score`` become query/positive examples.

    {"sentence1": "A man is playing a guitar.", "sentence2": "A man plays the guitar.", "score": 4.6}

Scores are on the dataset's own scale (STS-B 0-5: ``min_score: 4.0``). Pairs below it are
skipped (``skipped.below_min_score``), not errors. The score is kept in the metadata.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.ingest.examples import mapped_table
from kalm.ingest.formats.base import Mapper, empty_lists, filter_all


def as_float(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """``arr`` as float64 and a mask of values that are not numbers (text like "4.5" is parsed)."""
    if pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type):
        out = arr.cast(pa.float64())
        return out, np.zeros(len(arr), bool)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        vals = []
        bad = np.zeros(len(arr), bool)
        for i, v in enumerate(arr.to_pylist()):
            try:
                vals.append(None if v is None else float(v))
            except ValueError:
                vals.append(None)
                bad[i] = True
        return pa.array(vals, pa.float64()), bad
    return pa.nulls(len(arr), pa.float64()), np.asarray(arr.is_valid())


class StsMapper(Mapper):
    name = "sts"
    task_type = "sts"
    text_fields = ("sentence1", "sentence2")

    def map_batch(self, batch, src, stats, strict):
        chk = self.rowcheck(batch, src, stats, strict)
        s1, s2 = chk.text("sentence1"), chk.text("sentence2")
        raw = chk.raw("score")
        score, not_num = as_float(raw) if raw is not None else (pa.nulls(chk.n, pa.float64()), np.zeros(chk.n, bool))
        chk.drop("score_not_number", not_num)
        keep = chk.keep()
        low = keep & ~np.asarray(pc.fill_null(pc.greater_equal(score, src.min_score), False))
        stats.count("skipped", "below_min_score", int(low.sum()))
        keep &= ~low
        s1, s2, score, rows = filter_all(keep, s1, s2, score, batch.rows)
        return mapped_table(s1, s2, empty_lists(len(rows)), rows, batch.file, m_score=score)
