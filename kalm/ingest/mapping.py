"""Map in-memory rows with a format (small data, tests): the stage itself streams files.

``map_rows(src, rows)`` runs the format mapper of ``src`` over a list of row dicts and returns
the examples (checked, cleaned, in the example schema), as the stage would write them before
decontamination and deduplication.
"""

from __future__ import annotations

import random
import tempfile
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa

from kalm.ingest.config import DatasetSource
from kalm.ingest.examples import clean_examples, to_schema
from kalm.ingest.fields import SourceStats
from kalm.ingest.formats import MAPPERS, Context
from kalm.ingest.readers import Batch, RowSource
from kalm.schema import Example, iter_examples


class TableSource(RowSource):
    def __init__(self, table: pa.Table, label: str = "<rows>"):
        self.table, self.label = table, label

    def batches(self, batch_size: int = 8192, hint=None) -> Iterator[Batch]:
        for start in range(0, max(self.table.num_rows, 1), batch_size or 8192):
            t = self.table.slice(start, batch_size or 8192)
            yield Batch(t, np.arange(start + 1, start + 1 + t.num_rows, dtype=np.int64), self.label, "row")


def map_rows(src: DatasetSource, rows: list[dict[str, Any]], stats: Optional[SourceStats] = None) -> list[Example]:
    fmt = src.format if src.format != "auto" else "pairs"
    mapper = MAPPERS[fmt]
    stats = stats or SourceStats(src.name)
    source = TableSource(pa.Table.from_pylist(rows))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(workdir=tmp)
        for mapped in mapper.examples(src, source, stats, ctx):
            table = to_schema(clean_examples(mapped, stats), src, src.task_type or mapper.task_type)
            out += list(iter_examples(table.select(list(table.column_names[:10]))))
    return out


def map_classification(src: DatasetSource, rows: list[dict[str, Any]],
                       rng: Optional[random.Random] = None) -> list[Example]:
    """Classification rows -> examples (``rng`` is unused: pairing is seeded by ``src.seed``)."""
    return map_rows(src.model_copy(update={"format": "classification"}), rows)
