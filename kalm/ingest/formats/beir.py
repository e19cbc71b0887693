"""``beir``: BEIR / MTEB retrieval layout, local or on the hub.

    corpus.jsonl   {"_id": "4983", "title": "Microstructural development ...", "text": "Alterations of ..."}
    queries.jsonl  {"_id": "1", "text": "0-dimensional biomaterials show inductive properties."}
    qrels/<split>.tsv   query-id<TAB>corpus-id<TAB>score   (header line first)

On the hub (``hf_name``, e.g. ``mteb/scifact``): configs ``corpus``, ``queries`` and ``default``
(the qrels, split ``<split>``), or ``<hf_config>-corpus``/``-queries``/``-qrels`` for one language
of a multilingual set, as mteb's RetrievalDatasetLoader reads them.

A qrels row with score > 0 makes the document a positive of the query (score <= 0: skipped,
``skipped.qrels_score_not_positive``); one example per (query, positive document), the positives of
a query sharing the metadata ``group``; ``query_id``, ``corpus_id`` and ``score`` are kept in the
metadata. A document's text is its title and text joined by a space as MTEB joins them
(``(title + " " + text).strip()``; the text alone without a title). A qrels id missing from
queries/corpus is dropped (``dropped.query_id_unknown`` / ``corpus_id_unknown``) with its qrels line.
No negatives are given: the filter stage mines them.

Memory: the positive qrels and the queries and documents they name (as Arrow), never the whole
corpus: queries and corpus are streamed and filtered by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.ingest.examples import mapped_table
from kalm.ingest.formats.base import Mapper, empty_lists
from kalm.ingest.readers import IngestError, JsonlSource, RowSource, TsvSource, hub_source


@dataclass
class BeirSource:
    corpus: RowSource
    queries: RowSource
    qrels: RowSource
    label: str


def local_beir(path: Path, split: str) -> BeirSource | None:
    """The BEIR trio of a folder, or None when it has no ``qrels/<split>.tsv``."""
    qrels = path / "qrels" / f"{split}.tsv"
    if not qrels.is_file():
        return None
    for need in ("corpus.jsonl", "queries.jsonl"):
        if not (path / need).is_file():
            raise IngestError(f"{path}: has qrels/{split}.tsv but no {need}; a BEIR folder needs corpus.jsonl, "
                              f"queries.jsonl and qrels/<split>.tsv")
    return BeirSource(JsonlSource(path / "corpus.jsonl"), JsonlSource(path / "queries.jsonl"), TsvSource(qrels),
                      str(path))


def hub_beir(src) -> BeirSource:
    """Configs as mteb's RetrievalDatasetLoader names them: ``corpus``/``queries``/``default`` (qrels), or
    ``<hf_config>-corpus``/``-queries``/``-qrels`` for a per-language subset."""
    c = src.hf_config
    names = (f"{c}-corpus", f"{c}-queries", f"{c}-qrels") if c else ("corpus", "queries", "default")
    return BeirSource(hub_source(src, names[0], names[0], single_split=True),
                      hub_source(src, names[1], names[1], single_split=True),
                      hub_source(src, names[2], src.split), f"hub:{src.hf_name}")


def _col(table: pa.Table, names: tuple[str, ...], where: str, what: str) -> str:
    for n in names:
        if n in table.column_names:
            return n
    raise IngestError(f"{where}: no {' or '.join(repr(n) for n in names)} column ({what}); columns are "
                      f"{table.column_names}. Fix: use the BEIR layout (corpus _id/title/text, queries _id/text, "
                      "qrels query-id/corpus-id/score)")


def _text(arr) -> pa.Array:
    return pc.utf8_trim_whitespace(arr.combine_chunks().cast(pa.string()))


def doc_text(table: pa.Table) -> pa.Array:
    """MTEB's document text: ``(title + " " + text).strip()`` when the title is not empty, else the text."""
    text = pc.fill_null(table.column("text").combine_chunks().cast(pa.string()), "")
    if "title" not in table.column_names:
        return pc.utf8_trim_whitespace(text)
    title = pc.fill_null(table.column("title").combine_chunks().cast(pa.string()), "")
    joined = pc.binary_join_element_wise(title, text, " ")
    return pc.utf8_trim_whitespace(pc.if_else(pc.equal(title, ""), text, joined))


class BeirMapper(Mapper):
    name = "beir"

    def check(self, src, source: BeirSource, ctx):
        for part, ids, what in ((source.corpus, ("_id", "id"), "document id"), (source.queries, ("_id", "id"), "query id")):
            head = next(iter(part.batches(256)), None)
            if head is not None:
                _col(head.table, ids, head.file, what)
                _col(head.table, ("text",), head.file, "text")
        head = next(iter(source.qrels.batches(256)), None)
        if head is None:
            raise IngestError(f"dataset {src.name!r}: {source.qrels.label} has no qrels rows")
        for c in ("query-id", "corpus-id", "score"):
            _col(head.table, (c,), head.file, "qrels")

    def examples(self, src, source: BeirSource, stats, ctx):
        parts = []
        for batch in source.qrels.batches(ctx.batch_size):
            stats.rows_read += batch.table.num_rows
            if batch.file not in stats.files:
                stats.files.append(batch.file)
            t = batch.table
            score = pc.cast(t.column("score"), pa.float64(), safe=False)
            pos = np.asarray(pc.fill_null(pc.greater(score, 0), False))
            stats.count("skipped", "qrels_score_not_positive", int((~pos).sum()))
            parts.append(pa.table({"qid": t.column("query-id").cast(pa.string()),
                                   "did": t.column("corpus-id").cast(pa.string()), "score": score,
                                   "_row": pa.array(batch.rows, pa.int64()),
                                   "_file": pa.array([batch.file] * t.num_rows, pa.string())}).filter(pa.array(pos)))
        if not parts:
            return
        qrels = pa.concat_tables(parts)
        queries = self._select(source.queries, pc.unique(qrels.column("qid").combine_chunks()), "qid", False, ctx)
        docs = self._select(source.corpus, pc.unique(qrels.column("did").combine_chunks()), "did", True, ctx)
        for fld, ids, known in (("query_id", "qid", queries), ("corpus_id", "did", docs)):
            found = np.asarray(pc.is_in(qrels.column(ids), value_set=known.column(ids).combine_chunks()))
            if (~found).any():
                missing = qrels.filter(pa.array(~found))
                stats.count("dropped", f"{fld}_unknown", missing.num_rows,
                            [f"{f} line {r}" for f, r in zip(missing.column("_file").to_pylist()[:5],
                                                             missing.column("_row").to_pylist()[:5])])
                qrels = qrels.filter(pa.array(found))
        joined = qrels.join(queries, "qid", use_threads=False).join(docs, "did", use_threads=False)
        joined = joined.take(pc.sort_indices(joined, [("_row", "ascending")]))
        allp = joined.group_by("qid", use_threads=False).aggregate([("doc", "list")])
        at = pc.index_in(joined.column("qid"), value_set=allp.column("qid").combine_chunks())
        joined = joined.append_column("all_positives", pc.take(allp.column("doc_list").combine_chunks(), at))
        for start in range(0, joined.num_rows, ctx.batch_size):
            t = joined.slice(start, ctx.batch_size)
            out = mapped_table(t.column("query").combine_chunks(), t.column("doc").combine_chunks(),
                               empty_lists(t.num_rows), np.asarray(t.column("_row")), "",
                               all_positives=t.column("all_positives").combine_chunks(),
                               m_query_id=t.column("qid").combine_chunks(), m_corpus_id=t.column("did").combine_chunks(),
                               m_score=t.column("score").combine_chunks())
            yield out.set_column(out.column_names.index("_file"), "_file",
                                 t.column("_file").combine_chunks().dictionary_encode())

    def _select(self, part: RowSource, wanted: pa.Array, key: str, is_doc: bool, ctx) -> pa.Table:
        kept = []
        for batch in part.batches(ctx.batch_size):
            t = batch.table
            ids = t.column(_col(t, ("_id", "id"), batch.file, "id")).cast(pa.string())
            hit = pc.is_in(ids, value_set=wanted)
            if not pc.any(hit).as_py():
                continue
            t = t.filter(hit)
            text = doc_text(t) if is_doc else _text(t.column("text"))
            kept.append(pa.table({key: ids.filter(hit), "doc" if is_doc else "query": text}))
        name = "doc" if is_doc else "query"
        if not kept:
            return pa.table({key: pa.array([], pa.string()), name: pa.array([], pa.string())})
        out = pa.concat_tables(kept)
        ok = pc.fill_null(pc.greater(pc.utf8_length(out.column(name)), 0), False)
        return out.filter(ok)

    def map_batch(self, batch, src, stats, strict):  # three files: see examples()
        raise NotImplementedError
