"""``clustering``: texts with cluster labels, used like classification (positive: a text of the same
label; negative: a text of another label). Rows are either one text and its label, or MTEB's
clustering layout with one problem per row (lists of the same length):

    {"sentences": ["Stocks rally ...", "Cup final ..."], "labels": ["business", "sports"]}

Rows whose lists differ in length are dropped (``dropped.sentences_labels_length_mismatch``).
Pairing, memory and metadata: as ``classification``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.ingest.formats.base import filter_all
from kalm.ingest.formats.classification import ClassificationMapper, label_text
from kalm.ingest.fields import _is_list_type


class ClusteringMapper(ClassificationMapper):
    name = "clustering"
    task_type = "clustering"
    text_fields = ()

    def labelled(self, batch, src, stats, strict):
        chk = self.rowcheck(batch, src, stats, strict)
        col = chk.column("text")
        if col is None or not _is_list_type(batch.table.column(col).type):
            return super().labelled(batch, src, stats, strict)
        texts = batch.table.column(col).combine_chunks()
        raw = chk.raw("label")
        if raw is None or not _is_list_type(raw.type):
            raise chk.fail("label", chk.column("label"), 0, "is not a list while the texts are lists",
                            "give a list of labels beside each list of sentences (MTEB clustering layout)")
        texts = pc.fill_null(texts, pa.scalar([], texts.type))
        raw = pc.fill_null(raw, pa.scalar([], raw.type))
        chk.drop("sentences_labels_length_mismatch",
                 np.asarray(pc.list_value_length(texts)) != np.asarray(pc.list_value_length(raw)))
        keep = chk.keep()
        texts, raw, rows = filter_all(keep, texts, raw, batch.rows)
        parents = np.asarray(pc.list_parent_indices(texts))
        flat = pc.list_flatten(texts)
        if not (pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type) or pa.types.is_null(flat.type)):
            raise chk.fail("text", col, 0, f"holds a list of {flat.type}, not a list of texts")
        flat = pc.utf8_trim_whitespace(flat.cast(pa.string()))
        labels, bad = label_text(pc.list_flatten(raw))
        blank = np.asarray(pc.fill_null(pc.equal(pc.utf8_length(flat), 0), True))
        stats.count("dropped", "text_blank", int(blank.sum()))
        stats.count("dropped", "label_not_text", int((bad & ~blank).sum()))
        ok = pa.array(~blank & ~bad)
        return flat.filter(ok), labels.filter(ok), rows[parents][~blank & ~bad]
