"""One mapper per input format, and ``format: auto``'s choice among them.

Each module's docstring shows its layout with an example row; README "Bring your own data" lists
them. ``detect_format`` picks a format from the columns (and their types) of the first rows when
exactly one layout fits, and says why; otherwise it fails naming the columns and the formats.
"""

from __future__ import annotations

import pyarrow as pa

from kalm.ingest.fields import _is_list_type
from kalm.ingest.formats.base import Context, Mapper
from kalm.ingest.formats.beir import BeirMapper
from kalm.ingest.formats.classification import ClassificationMapper
from kalm.ingest.formats.clustering import ClusteringMapper
from kalm.ingest.formats.examples import ExamplesMapper
from kalm.ingest.formats.flagembedding import FlagEmbeddingMapper
from kalm.ingest.formats.nli import NliMapper
from kalm.ingest.formats.pair_classification import PairClassificationMapper
from kalm.ingest.formats.pairs import PairsMapper
from kalm.ingest.formats.reranking import RerankingMapper
from kalm.ingest.formats.sentence_transformers import SentenceTransformersMapper
from kalm.ingest.formats.sts import StsMapper
from kalm.ingest.formats.tevatron import TevatronMapper
from kalm.ingest.readers import IngestError
from kalm.schema import COLUMNS

MAPPERS: dict[str, Mapper] = {m.name: m for m in (
    PairsMapper(), StsMapper(), ClassificationMapper(), ClusteringMapper(), PairClassificationMapper(), NliMapper(),
    RerankingMapper(), FlagEmbeddingMapper(), SentenceTransformersMapper(), TevatronMapper(), BeirMapper(),
    ExamplesMapper())}

__all__ = ["MAPPERS", "Context", "Mapper", "detect_format"]


def detect_format(schema: pa.Schema, where: str) -> tuple[str, str]:
    """(format, why) for a table with ``schema``; IngestError when no layout or several fit."""
    cols = set(schema.names) - {"_empty"}
    is_list = {n for n in cols if _is_list_type(schema.field(n).type)}
    rules = [
        ("examples", {"query", "positive", "task_type", "negatives"} <= cols and set(COLUMNS) - {"id"} <= cols | {"persona"},
         "kalm example-schema columns"),
        ("flagembedding", {"query", "pos"} <= cols, "columns query + pos (FlagEmbedding/BGE)"),
        ("tevatron", {"query", "positive_passages"} <= cols, "columns query + positive_passages (Tevatron)"),
        ("reranking", {"query", "positive", "negative"} <= cols and "positive" in is_list,
         "columns query + positive[] + negative[] (MTEB reranking)"),
        ("sentence_transformers", "anchor" in cols and "positive" in cols,
         "columns anchor + positive (sentence-transformers)"),
        ("nli", {"premise", "hypothesis", "label"} <= cols, "columns premise + hypothesis + label (NLI)"),
        ("sts", {"sentence1", "sentence2", "score"} <= cols, "columns sentence1 + sentence2 + score (STS)"),
        ("pair_classification", {"sentence1", "sentence2", "label"} <= cols and "score" not in cols,
         "columns sentence1 + sentence2 + label (pair classification)"),
        ("clustering", ({"sentences", "labels"} <= cols) or ({"sentence", "label"} <= cols),
         "columns sentences + labels (clustering)"),
        ("classification", {"text", "label"} <= cols, "columns text + label (classification)"),
        ("pairs", {"query", "positive"} <= cols and "positive" not in is_list and "task_type" not in cols,
         "columns query + positive (pairs)"),
    ]
    hits = [(name, why) for name, ok, why in rules if ok]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise IngestError(f"{where}: format: auto cannot tell the layout from columns {sorted(cols)}. Fix: set "
                          f"format (one of {', '.join(sorted(MAPPERS))}) and map columns with fields:")
    raise IngestError(f"{where}: format: auto is ambiguous for columns {sorted(cols)}: it fits "
                      f"{', '.join(n for n, _ in hits)}. Fix: set format: to one of them")
