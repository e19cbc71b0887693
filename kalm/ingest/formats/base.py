"""What every format mapper shares: reading batches, the first-block check, the mapped-table shape."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.ingest.config import FORMAT_FIELDS, DatasetSource
from kalm.ingest.fields import RowCheck, SourceStats
from kalm.ingest.readers import Batch, RowSource

STRING = pa.string()
TEXTS = pa.list_(pa.string())


@dataclass
class Context:
    """Stage-wide settings a mapper may need."""

    batch_size: int = 8_192
    pair_pool_per_label: int = 10_000
    workdir: Optional[Path] = None  # for two-pass formats' spill files (removed with the stage's temp folder)

    def tempdir(self) -> tempfile.TemporaryDirectory:
        return tempfile.TemporaryDirectory(dir=self.workdir, prefix="spill-")


class Mapper:
    """One format: rows of a source -> mapped tables (see kalm.ingest.examples)."""

    name = ""
    task_type = "retrieval"
    text_fields: tuple[str, ...] = ()  # read as one text (JSON Lines reads them as strings)
    list_fields: tuple[str, ...] = ()  # read as lists of texts
    fixes: dict[str, str] = {}

    def hint(self, src: DatasetSource) -> dict[str, pa.DataType]:
        """Expected Arrow types of the JSON columns this format reads (a value of another type is set aside)."""
        out: dict[str, pa.DataType] = {}
        for fields, t in ((self.text_fields, STRING), (self.list_fields, TEXTS)):
            for f in fields:
                cols = [src.fields[f]] if f in src.fields else FORMAT_FIELDS.get(self.name, {}).get(f, (f,))
                out.update({c: t for c in cols})
        return out

    def check(self, src: DatasetSource, source: RowSource, ctx: Context) -> None:
        """Fail before any work on a wholly wrong column of the first block (the mapping itself, discarded)."""
        head = next(iter(source.batches(ctx.batch_size, self.hint(src))), None)
        if head is not None:
            self.map_batch(head, src, SourceStats(src.name), strict=True)

    def examples(self, src: DatasetSource, source: RowSource, stats: SourceStats, ctx: Context) -> Iterator[pa.Table]:
        for i, batch in enumerate(source.batches(ctx.batch_size, self.hint(src))):
            stats.rows_read += batch.table.num_rows
            if batch.file not in stats.files:
                stats.files.append(batch.file)
            yield self.map_batch(batch, src, stats, strict=(i == 0))

    def map_batch(self, batch: Batch, src: DatasetSource, stats: SourceStats, strict: bool) -> pa.Table:
        raise NotImplementedError

    def rowcheck(self, batch: Batch, src: DatasetSource, stats: SourceStats, strict: bool) -> RowCheck:
        return RowCheck(batch, src, self.name, stats, strict, self.fixes)


def explode(lists: pa.ListArray) -> tuple[np.ndarray, pa.Array]:
    """(parent row of each item, items) of a list column: one output row per item."""
    return np.asarray(pc.list_parent_indices(lists)), pc.list_flatten(lists)


def take(arr: Optional[pa.Array], idx: np.ndarray) -> Optional[pa.Array]:
    return None if arr is None else pc.take(arr, pa.array(idx, pa.int64()))


def filter_all(mask: np.ndarray, *arrays):
    m = pa.array(np.asarray(mask, dtype=bool))
    return [None if a is None else (a[np.asarray(mask, dtype=bool)] if isinstance(a, np.ndarray) else pc.filter(a, m))
            for a in arrays]


def empty_lists(n: int) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], STRING))
