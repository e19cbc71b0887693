"""``sentence_transformers``: the column layout sentence-transformers' losses read (by position, not
by name): the first column is the anchor, the second the positive, every further column a
negative (``negative``, ``negative_1`` ... ``negative_n``); columns named ``label`` or ``score``
are not inputs (sentence-transformers treats them as targets).

    {"anchor": "how do I reset a router", "positive": "Hold the reset button ...", "negative": "Routers ..."}

``fields: {anchor: <column>, positive: <column>}`` names the two first columns instead;
``fields: {negatives: "col_a,col_b"}`` names the negative columns. A negative column holding lists
is read as a list of negatives.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kalm.ingest.examples import mapped_table
from kalm.ingest.fields import clean_lists, _is_list_type
from kalm.ingest.formats.base import Mapper, empty_lists, filter_all
from kalm.ingest.readers import IngestError

TARGET_COLUMNS = ("label", "score", "labels", "scores")


def input_columns(src, columns: list[str]) -> tuple[str, str, list[str]]:
    cols = [c for c in columns if c not in TARGET_COLUMNS and c != "_empty"]
    anchor = src.fields.get("anchor") or (cols[0] if cols else None)
    positive = src.fields.get("positive") or next((c for c in cols if c != anchor), None)
    if anchor is None or positive is None:
        raise IngestError(f"dataset {src.name!r}: format 'sentence_transformers' needs at least two input columns "
                          f"(anchor, positive); columns are {columns}")
    if "negatives" in src.fields:
        negatives = [c.strip() for c in src.fields["negatives"].split(",") if c.strip()]
    else:
        negatives = [c for c in cols if c not in (anchor, positive)]
    return anchor, positive, negatives


class SentenceTransformersMapper(Mapper):
    name = "sentence_transformers"

    def hint(self, src):
        return {}

    def map_batch(self, batch, src, stats, strict):
        anchor, positive, negatives = input_columns(src, batch.table.column_names)
        src_cols = src.model_copy(update={"fields": {**src.fields, "anchor": anchor, "positive": positive}})
        chk = self.rowcheck(batch, src_cols, stats, strict)
        q, p = chk.text("anchor"), chk.text("positive")
        n = chk.n
        parts = []
        for col in negatives:
            if col not in batch.table.column_names:
                if strict:
                    raise chk.fail("negatives", col, 0, "names a column that does not exist")
                continue
            arr = batch.table.column(col).combine_chunks()
            if _is_list_type(arr.type):
                parts.append(clean_lists(arr)[0])
            else:
                chk_col = self.rowcheck(batch, src.model_copy(update={"fields": {"negatives": col}}), stats, strict)
                parts.append(chk_col.texts("negatives"))
        negs = _concat_lists(parts, n) if parts else empty_lists(n)
        keep = chk.keep()
        q, p, negs, rows = filter_all(keep, q, p, negs, batch.rows)
        return mapped_table(q, p, negs, rows, batch.file)


def _concat_lists(parts: list[pa.ListArray], n: int) -> pa.ListArray:
    """Row-wise concatenation of several list columns."""
    import pyarrow.compute as pc

    values, parents = [], []
    for k, lst in enumerate(parts):
        values.append(pc.list_flatten(lst))
        parents.append(np.asarray(pc.list_parent_indices(lst)) * len(parts) + k)
    par = np.concatenate(parents)
    order = np.argsort(par, kind="stable")
    flat = pa.concat_arrays(values).take(pa.array(order))
    counts = np.bincount(par[order] // len(parts), minlength=n)
    return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)), flat)
