"""``reranking``: a query with a list of relevant and a list of irrelevant passages (MTEB's layout).

    {"query": "what is a sourdough starter", "positive": ["A starter is ..."], "negative": ["Baguettes ..."]}

One example per positive (they share the metadata ``group``, and no positive of the row is kept
as another's negative); every negative of the row is a given hard negative of each.
"""

from __future__ import annotations

import pyarrow as pa

from kalm.ingest.examples import mapped_table
from kalm.ingest.formats.base import Mapper, explode, filter_all, take


class RerankingMapper(Mapper):
    name = "reranking"
    text_fields = ("query",)
    list_fields = ("positive", "negative")
    pos_field, neg_field = "positive", "negative"

    def map_batch(self, batch, src, stats, strict):
        chk = self.rowcheck(batch, src, stats, strict)
        q = chk.text("query")
        pos = chk.texts(self.pos_field, required=True)
        neg = chk.texts(self.neg_field)
        extra = self.extra(chk)
        keep = chk.keep()
        q, pos, neg, rows = filter_all(keep, q, pos, neg, batch.rows)
        extra = {k: filter_all(keep, v)[0] for k, v in extra.items()}
        parents, positives = explode(pos)
        cols = {k: take(v, parents) for k, v in extra.items()}
        return mapped_table(take(q, parents), positives, take(neg, parents), rows[parents], batch.file,
                            all_positives=take(pos, parents), **cols)

    def extra(self, chk) -> dict[str, pa.Array]:
        return {}
