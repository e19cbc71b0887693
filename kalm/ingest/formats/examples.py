"""``examples``: rows already in kalm's example schema (the output of another kalm stage or run).

    {"task_type": "retrieval", "instruction": "...", "query": "...", "positive": "...", "negatives": [], ...}

Rows are checked like every format's (null/blank/list fields dropped by reason); ``task_type``
must be one of kalm's task types (``dropped.task_type_unknown`` otherwise); ``metadata`` (a JSON
object or its text) is kept and extended; a row's ``language`` and ``persona`` are kept (the
dataset's ``language`` fills a missing one); ids are recomputed from the content and source.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.configbase import TASK_TYPES
from kalm.ingest.examples import mapped_table
from kalm.ingest.formats.base import Mapper, filter_all


class ExamplesMapper(Mapper):
    name = "examples"
    text_fields = ("query", "positive", "task_type")
    list_fields = ("negatives",)

    def map_batch(self, batch, src, stats, strict):
        chk = self.rowcheck(batch, src, stats, strict)
        q, p = chk.text("query"), chk.text("positive")
        negs = chk.texts("negatives")
        tt = chk.text("task_type")
        chk.drop("task_type_unknown", ~np.asarray(pc.fill_null(pc.is_in(tt, value_set=pa.array(list(TASK_TYPES))), True)))
        instr = chk.text("instruction", required=False)
        lang = chk.text("language", required=False)
        persona = chk.text("persona", required=False)
        meta = batch.table.column("metadata").combine_chunks() if "metadata" in batch.table.column_names else None
        keep = chk.keep()
        q, p, negs, tt, instr, lang, persona, rows = filter_all(keep, q, p, negs, tt, instr, lang, persona,
                                                                batch.rows)
        # Rows of an earlier kalm stage (synthetic data) keep their own language and persona.
        extra = {"task_type": tt, "instruction": instr, "language": lang, "persona": persona}
        if meta is not None:
            meta = meta.filter(pa.array(keep))
            extra["_metadata"] = pa.array([_meta(m) for m in meta.to_pylist()], pa.string())
        return mapped_table(q, p, negs, rows, batch.file, **extra)


def _meta(m) -> str | None:
    if m is None or m == "":
        return None
    return m if isinstance(m, str) else json.dumps(m, sort_keys=True, ensure_ascii=False)
