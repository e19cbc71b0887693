"""``tevatron``: Tevatron's training layout: a query with lists of positive and negative passages,
each ``{docid, title, text}``.

    {"query_id": "3", "query": "what is a starter",
     "positive_passages": [{"docid": "7", "title": "", "text": "A starter is ..."}],
     "negative_passages": [{"docid": "9", "title": "Bread", "text": "Baguettes ..."}]}

A passage's text is its title and text joined by a space as MTEB joins them (the text alone when
the title is empty). One example per positive passage (sharing the metadata ``group``); the negative passages are
given hard negatives of each.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.ingest.examples import mapped_table
from kalm.ingest.fields import _is_list_type, clean_lists, lists_from
from kalm.ingest.formats.base import Mapper, explode, filter_all, take


def passage_texts(arr: pa.Array) -> pa.ListArray:
    """list<struct{title?, text}> -> list<text> with the title joined as MTEB does."""
    arr = pc.fill_null(arr, pa.scalar([], arr.type)) if arr.null_count else arr
    flat = pc.list_flatten(arr)
    parents = np.asarray(pc.list_parent_indices(arr))
    names = [flat.type.field(i).name for i in range(flat.type.num_fields)]
    text = pc.struct_field(flat, "text").cast(pa.string())
    if "title" in names:  # as MTEB: (title + " " + text).strip() when the title is not empty
        title = pc.fill_null(pc.struct_field(flat, "title").cast(pa.string()), "")
        joined = pc.binary_join_element_wise(title, pc.fill_null(text, ""), " ")
        text = pc.if_else(pc.equal(title, ""), text, joined)
    return clean_lists(lists_from(text, parents, len(arr)))[0]


class TevatronMapper(Mapper):
    name = "tevatron"
    text_fields = ("query",)

    def _passages(self, chk, fld, required):
        col = chk.present(fld, required)
        if col is None:
            return None
        arr = chk.batch.table.column(col).combine_chunks()
        if not _is_list_type(arr.type) or not pa.types.is_struct(arr.type.value_type) or \
                "text" not in [arr.type.value_type.field(i).name for i in range(arr.type.value_type.num_fields)]:
            raise chk.fail(fld, col, 0, f"holds {arr.type}, not a list of {{docid, title, text}} passages",
                            "give passages as objects with a 'text' (and optional 'title', 'docid')")
        return arr

    def map_batch(self, batch, src, stats, strict):
        chk = self.rowcheck(batch, src, stats, strict)
        q = chk.text("query")
        pos_raw = self._passages(chk, "positive_passages", True)
        neg_raw = self._passages(chk, "negative_passages", False)
        pos = passage_texts(pos_raw) if pos_raw is not None else None
        if pos is not None:
            chk.drop("positive_passages_empty", np.asarray(pc.list_value_length(pos)) == 0)
        neg = passage_texts(neg_raw) if neg_raw is not None else pa.ListArray.from_arrays(
            pa.array(np.zeros(chk.n + 1, np.int32)), pa.array([], pa.string()))
        keep = chk.keep()
        q, pos, neg, rows = filter_all(keep, q, pos, neg, batch.rows)
        parents, positives = explode(pos)
        return mapped_table(take(q, parents), positives, take(neg, parents), rows[parents], batch.file,
                            all_positives=take(pos, parents))
