"""``pairs``: one query, one positive text and optional negatives per row.

    {"query": "how do I reset a router", "positive": "Hold the reset button ...", "negatives": ["..."]}

Columns are mapped with ``fields: {query: <column>, positive: <column>, negatives: <column>}``;
``negatives`` may be a list or one text. A list in ``query`` or ``positive`` is an error (a list
is never printed into a text): BGE-style files with ``pos`` lists are ``format: flagembedding``.
"""

from __future__ import annotations

from kalm.ingest.examples import mapped_table
from kalm.ingest.formats.base import Mapper, filter_all

LIST_FIX = ("`format: pairs` takes one positive text per row. For BGE/FlagEmbedding files (query, pos [...], "
            "neg [...]) use `format: flagembedding` (one example per positive; it reads the columns query, pos and "
            "neg, so drop a `fields:` mapping of them); for query/positive [...]/negative [...] rows use "
            "`format: reranking`")


class PairsMapper(Mapper):
    name = "pairs"
    text_fields = ("query", "positive")
    list_fields = ("negatives",)
    fixes = {"positive": LIST_FIX, "query": "give one query text per row"}

    def map_batch(self, batch, src, stats, strict):
        chk = self.rowcheck(batch, src, stats, strict)
        q, p = chk.text("query"), chk.text("positive")
        negs = chk.texts("negatives")
        keep = chk.keep()
        q, p, negs, rows = filter_all(keep, q, p, negs, batch.rows)
        return mapped_table(q, p, negs, rows, batch.file)
