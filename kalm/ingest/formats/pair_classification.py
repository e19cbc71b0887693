"""``pair_classification``: sentence pairs labelled 1 (paraphrase / duplicate / entailment) or 0;
label-1 pairs become query/positive examples.

    {"sentence1": "我想开通花呗", "sentence2": "怎么开通花呗", "label": 1}

Label-0 pairs are skipped (``skipped.negative_pair``); a label that is neither 0 nor 1 is
dropped (``dropped.label_not_0_or_1``). Default task type ``pair_classification`` (symmetric).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.ingest.examples import mapped_table
from kalm.ingest.formats.base import Mapper, empty_lists, filter_all
from kalm.ingest.formats.classification import label_text


class PairClassificationMapper(Mapper):
    name = "pair_classification"
    task_type = "pair_classification"
    text_fields = ("sentence1", "sentence2")

    def map_batch(self, batch, src, stats, strict):
        chk = self.rowcheck(batch, src, stats, strict)
        s1, s2 = chk.text("sentence1"), chk.text("sentence2")
        raw = chk.raw("label")
        labels, bad = label_text(raw) if raw is not None else (pa.nulls(chk.n, pa.string()), np.zeros(chk.n, bool))
        lab = pc.utf8_lower(labels)
        one = np.asarray(pc.fill_null(pc.is_in(lab, value_set=pa.array(["1", "true"])), False))
        zero = np.asarray(pc.fill_null(pc.is_in(lab, value_set=pa.array(["0", "false"])), False))
        chk.drop("label_not_0_or_1", (bad | (~one & ~zero)) & np.asarray(labels.is_valid()))
        keep = chk.keep()
        stats.count("skipped", "negative_pair", int((keep & zero).sum()))
        keep &= one
        s1, s2, rows = filter_all(keep, s1, s2, batch.rows)
        return mapped_table(s1, s2, empty_lists(len(rows)), rows, batch.file)
