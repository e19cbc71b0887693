"""``flagembedding``: FlagEmbedding's (BGE) fine-tuning JSON Lines.

    {"query": "how to fold a fitted sheet", "pos": ["Tuck the corners ..."], "neg": ["Sheets ..."], "prompt": "..."}

One example per item of ``pos`` (sharing the metadata ``group``; no positive is kept as another's
negative); ``neg`` (list, may be empty or missing) are given hard negatives. ``prompt``, when given,
is that row's instruction. ``type``, when given, picks the task type by keyword ("sts", "class",
"clust", "pair") and is kept in the metadata; other values keep the source's task type.
``pos_scores``/``neg_scores`` (distillation scores) are not used.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from kalm.ingest.formats.reranking import RerankingMapper

TYPE_KEYWORDS = (("sts", "sts"), ("clust", "clustering"), ("class", "classification"), ("pair", "pair_classification"))


def task_type_of(types: pa.Array) -> pa.Array:
    low = pc.utf8_lower(types)
    out = pa.nulls(len(types), pa.string())
    for key, tt in reversed(TYPE_KEYWORDS):
        hit = pc.fill_null(pc.match_substring(low, key), False)
        out = pc.if_else(hit, pa.scalar(tt), out)
    return out


class FlagEmbeddingMapper(RerankingMapper):
    name = "flagembedding"
    text_fields = ("query", "prompt", "type")
    list_fields = ("pos", "neg")
    pos_field, neg_field = "pos", "neg"

    def extra(self, chk):
        out = {}
        prompt = chk.text("prompt", required=False)
        if prompt.null_count < len(prompt):
            out["instruction"] = prompt
        kind = chk.text("type", required=False)
        if kind.null_count < len(kind):
            out["m_type"] = kind
            out["task_type"] = task_type_of(kind)
        return out
