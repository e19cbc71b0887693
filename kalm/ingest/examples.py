"""From a format mapper's output to rows of the example schema.

Mappers yield *mapped tables*: ``query``, ``positive`` (strings), ``negatives`` (list of strings),
``_row`` (1-based line/row in the source file), ``_file``, and optionally ``all_positives`` (every
positive of the source row, so none becomes another's negative), per-row ``task_type`` /
``instruction``, and ``m_<key>`` columns that go into the metadata JSON.

:func:`clean_examples` applies the rules every format shares, compared after
:func:`kalm.text.fold` (case, whitespace, NFKC): an example whose query equals its positive is
dropped; a negative equal to the positive, the query or another positive of the same row, or a
repeat within the list, is removed (counted in ``negatives_removed``).

:func:`to_schema` adds ids, the metadata JSON and the source's constants. Metadata keys:
``group`` (hash of the folded query: examples sharing it answer the same query -- several
positives of one row, or the same query on several rows -- and must never be each other's
negatives), ``in_domain``, ``row`` (source line/row), and the format's own (``label``, ``score``, ...).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.ingest.config import DatasetSource
from kalm.ingest.fields import FIRST_ROWS, SourceStats, lists_from, row_labels
from kalm.schema import SCHEMA, example_id
from kalm.text import fold_array

GROUP_KEY = "group"


def mapped_table(query: pa.Array, positive: pa.Array, negatives: pa.Array, rows: np.ndarray, file: str,
                 **extra: Any) -> pa.Table:
    cols = {"query": query, "positive": positive, "negatives": negatives,
            "_row": pa.array(np.asarray(rows, dtype=np.int64)),
            "_file": pa.array([file] * len(rows), pa.string()).dictionary_encode()}
    cols.update({k: v for k, v in extra.items() if v is not None})
    return pa.table(cols)


def _where(table: pa.Table, idx: np.ndarray) -> list[str]:
    return row_labels(table, idx[:FIRST_ROWS])


def _keyed(parents: np.ndarray, texts: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(pa.array(parents.astype(np.int64)).cast(pa.string()), texts, "\x1f")


def clean_examples(table: pa.Table, stats: SourceStats) -> pa.Table:
    """Drop examples whose query equals their positive; remove bad negatives (see module doc)."""
    if table.num_rows == 0:
        return table
    fq = fold_array(table.column("query").combine_chunks())
    fp = fold_array(table.column("positive").combine_chunks())
    same = np.asarray(pc.fill_null(pc.equal(fq, fp), False))
    if same.any():
        stats.count("dropped", "query_equals_positive", int(same.sum()), _where(table, np.flatnonzero(same)))
        keep = pa.array(~same)
        table, fq, fp = table.filter(keep), fq.filter(keep), fp.filter(keep)
    negs = table.column("negatives").combine_chunks()
    if len(pc.list_flatten(negs)) == 0:
        return table
    parents = np.asarray(pc.list_parent_indices(negs))
    fn = fold_array(pc.list_flatten(negs))
    fq_p, fp_p = pc.take(fq, pa.array(parents)), pc.take(fp, pa.array(parents))
    reason = np.full(len(parents), "", dtype=object)
    reason[np.asarray(pc.fill_null(pc.equal(fn, fp_p), False))] = "negative_equals_positive"
    eq_q = np.asarray(pc.fill_null(pc.equal(fn, fq_p), False))
    reason[(reason == "") & eq_q] = "negative_equals_query"
    if "all_positives" in table.column_names:
        allp = table.column("all_positives").combine_chunks()
        pos_keys = _keyed(np.asarray(pc.list_parent_indices(allp)), fold_array(pc.list_flatten(allp)))
        other = np.asarray(pc.fill_null(pc.is_in(_keyed(parents, fn), value_set=pos_keys), False))
        reason[(reason == "") & other] = "negative_is_another_positive"
    keys = _keyed(parents, fn)
    ids = np.asarray(pc.index_in(keys, value_set=pc.unique(keys)))
    first = np.zeros(len(ids), dtype=bool)
    first[np.unique(ids, return_index=True)[1]] = True
    reason[(reason == "") & ~first] = "negative_repeated"
    drop = reason != ""
    if not drop.any():
        return table
    for r in sorted(set(reason[drop])):
        stats.count("negatives_removed", r, int((reason == r).sum()))
    values = pc.list_flatten(negs).filter(pa.array(~drop))
    new = lists_from(values, parents[~drop], table.num_rows)
    return table.set_column(table.column_names.index("negatives"), "negatives", new)


def group_ids(fq: pa.Array) -> list[str]:
    return [hashlib.blake2b((q or "").encode("utf-8"), digest_size=8).hexdigest() for q in fq.to_pylist()]


def to_schema(table: pa.Table, src: DatasetSource, task_type: str, detect_language=None) -> pa.Table:
    """The example-schema table of a cleaned mapped table (ids, metadata JSON, constants)."""
    n = table.num_rows
    if n == 0:
        return SCHEMA.empty_table()
    names = table.column_names
    query = table.column("query").combine_chunks()
    positive = table.column("positive").combine_chunks()
    tt = table.column("task_type").to_pylist() if "task_type" in names else [task_type] * n
    tt = [t or task_type for t in tt]
    instr = table.column("instruction").to_pylist() if "instruction" in names else [src.instruction] * n
    instr = [i if i else src.instruction for i in instr]
    q_list, p_list = query.to_pylist(), positive.to_pylist()
    groups = group_ids(fold_array(query))
    rows = table.column("_row").to_pylist()
    meta_cols = [(c[2:], table.column(c).to_pylist()) for c in names if c.startswith("m_")]
    original = table.column("_metadata").to_pylist() if "_metadata" in names else None
    metadata = []
    for i in range(n):
        m: dict[str, Any] = {GROUP_KEY: groups[i], "in_domain": src.in_domain, "row": rows[i]}
        for key, values in meta_cols:
            if values[i] is not None:
                m[key] = values[i]
        if original is not None and original[i]:
            m.update(json.loads(original[i]))  # rows from an earlier kalm stage keep their metadata (and group)
        metadata.append(json.dumps(m, sort_keys=True, ensure_ascii=False))
    if src.language == "auto" and detect_language is not None:
        language = [detect_language(f"{q} {p}") for q, p in zip(q_list, p_list)]
    else:
        language = [src.language] * n
    if "language" in names:  # rows that name their own language (the examples format) keep it
        language = [own or lang for own, lang in zip(table.column("language").to_pylist(), language)]
    persona = table.column("persona").cast(pa.string()) if "persona" in names else pa.nulls(n, pa.string())
    ids = [example_id(src.name, t, q, p) for t, q, p in zip(tt, q_list, p_list)]
    return pa.table({
        "id": pa.array(ids, pa.string()), "task_type": pa.array(tt, pa.string()),
        "instruction": pa.array(instr, pa.string()), "query": query, "positive": positive,
        "negatives": table.column("negatives").combine_chunks().cast(pa.list_(pa.string())),
        "language": pa.array(language, pa.string()), "source": pa.array([src.name] * n, pa.string()),
        "persona": persona, "metadata": pa.array(metadata, pa.string()),
        # where each example came from, for messages; the shard writer keeps only the schema's columns
        "_row": table.column("_row"), "_file": table.column("_file"),
    })

