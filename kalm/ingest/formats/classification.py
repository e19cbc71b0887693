"""``classification``: text/label rows; each text becomes a query whose positive is another text of
its label and whose negative is a text of another label (KaLM's use of classification data; the
trainer does not use in-batch negatives for this task type, as they may share the label).

    {"text": "I still have not received my new card", "label": "card_arrival"}

Bounded memory (two passes): pass 1 streams the rows, writes the checked (text, label) pairs to a
spill file and keeps, per label, a seeded uniform sample of at most ``pair_pool_per_label`` texts
(bottom-k of seeded random keys). Pass 2 streams the spill file and draws each text's positive
from its label's sample (never the text itself) and its negative from another label's sample.
With at most ``pair_pool_per_label`` texts in a label this is a uniform draw over all its texts.
Memory: the samples (labels x pool size), not the dataset. A label with one text gives no example
(``skipped.label_has_one_text``). The label is kept in the metadata (``label``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kalm.ingest.examples import mapped_table
from kalm.ingest.formats.base import Context, Mapper, filter_all
from kalm.ingest.readers import IngestError


def label_text(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Labels as strings (integers as "3", integral floats as "3") and a mask of unusable values."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr, t = arr.cast(t.value_type), t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr.cast(pa.string()), np.zeros(len(arr), bool)
    if pa.types.is_floating(t):
        vals = arr.to_numpy(zero_copy_only=False)
        if np.all(np.isnan(vals) | (vals == np.round(vals))):
            return pc.cast(arr, pa.int64()).cast(pa.string()), np.zeros(len(arr), bool)
        return arr.cast(pa.string()), np.zeros(len(arr), bool)
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return arr.cast(pa.string()), np.zeros(len(arr), bool)
    return pa.nulls(len(arr), pa.string()), np.asarray(arr.is_valid())


def _bottom_k(table: pa.Table, k: int) -> pa.Table:
    """Per label, the ``k`` rows with the smallest ``key`` (a seeded uniform sample)."""
    if table.num_rows == 0:
        return table
    table = table.take(pc.sort_indices(table, [("label", "ascending"), ("key", "ascending")]))
    labels = table.column("label").combine_chunks()
    change = np.ones(len(labels), dtype=bool)
    if len(labels) > 1:
        change[1:] = np.asarray(pc.not_equal(labels[1:], labels[:-1]))
    starts = np.flatnonzero(change)
    group_start = starts[np.cumsum(change) - 1]
    rank = np.arange(len(labels)) - group_start
    return table.filter(pa.array(rank < k))


class ClassificationMapper(Mapper):
    name = "classification"
    task_type = "classification"
    text_fields = ("text",)

    def labelled(self, batch, src, stats, strict):
        """(texts, labels as strings, row numbers) of the usable rows of ``batch``."""
        chk = self.rowcheck(batch, src, stats, strict)
        text = chk.text("text")
        raw = chk.raw("label")
        if raw is None:
            labels = pa.nulls(chk.n, pa.string())
        else:
            labels, bad = label_text(raw)
            if strict and bad.all() and chk.n:
                raise chk.fail("label", chk.column("label"), 0, f"holds a {raw.type}, not a label",
                                "give one label (text or integer) per row")
            chk.drop("label_not_text", bad)
        keep = chk.keep()
        return filter_all(keep, text, labels, batch.rows)

    def check(self, src, source, ctx):
        from kalm.ingest.fields import SourceStats

        head = next(iter(source.batches(ctx.batch_size, self.hint(src))), None)
        if head is not None:
            self.labelled(head, src, SourceStats(src.name), strict=True)

    def examples(self, src, source, stats, ctx: Context):
        rng = np.random.default_rng([src.seed, 0])
        pool_size = ctx.pair_pool_per_label
        pools = None
        with ctx.tempdir() as tmp:
            spill_path = f"{tmp}/rows.parquet"
            spill_schema = pa.schema([("text", pa.string()), ("label", pa.string()), ("_row", pa.int64()),
                                      ("_file", pa.string())])
            with pq.ParquetWriter(spill_path, spill_schema) as spill:
                for i, batch in enumerate(source.batches(ctx.batch_size, self.hint(src))):
                    stats.rows_read += batch.table.num_rows
                    if batch.file not in stats.files:
                        stats.files.append(batch.file)
                    text, labels, rows = self.labelled(batch, src, stats, strict=(i == 0))
                    spill.write_table(pa.table({"text": text, "label": labels, "_row": pa.array(rows, pa.int64()),
                                                "_file": pa.array([batch.file] * len(rows), pa.string())},
                                               schema=spill_schema))
                    new = pa.table({"label": labels, "text": text, "key": pa.array(rng.random(len(rows)))})
                    pools = _bottom_k(new if pools is None else pa.concat_tables([pools, new]), pool_size)
            if pools is None or pools.num_rows == 0:
                return
            yield from self._pairs(src, stats, ctx, spill_path, pools)

    def _pairs(self, src, stats, ctx, spill_path, pools):
        labels = pc.unique(pools.column("label").combine_chunks())
        labels = labels.take(pc.sort_indices(labels))
        if len(labels) < 2:
            raise IngestError(f"dataset {src.name!r}: {self.name} needs at least 2 labels (texts of one label are "
                              f"positives, of another negatives); found {labels.to_pylist()}. "
                              "Fix: check the label column (fields: {label: <column>})")
        pool_label = pools.column("label").combine_chunks()
        pool_text = pools.column("text").combine_chunks()
        li_pool = np.asarray(pc.index_in(pool_label, value_set=labels))
        sizes = np.bincount(li_pool, minlength=len(labels))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rng = np.random.default_rng([src.seed, 1])
        for rb in pq.ParquetFile(spill_path).iter_batches(batch_size=ctx.batch_size):
            t = pa.Table.from_batches([rb])
            text = t.column("text").combine_chunks()
            lab = t.column("label").combine_chunks()
            li = np.asarray(pc.index_in(lab, value_set=labels))
            size = sizes[li]
            r = rng.integers(0, size)
            pos = pc.take(pool_text, pa.array(starts[li] + r))
            same = np.asarray(pc.equal(pos, text)) & (size > 1)
            if same.any():  # never the text itself: the next text of the label's sample instead
                r2 = np.where(same, (r + 1) % np.maximum(size, 1), r)
                pos = pc.take(pool_text, pa.array(starts[li] + r2))
            other = rng.integers(0, len(labels) - 1, len(li))
            other = other + (other >= li)
            neg = pc.take(pool_text, pa.array(starts[other] + rng.integers(0, sizes[other])))
            alone = size < 2
            stats.count("skipped", "label_has_one_text", int(alone.sum()))
            negs = pa.ListArray.from_arrays(pa.array(np.arange(len(li) + 1, dtype=np.int32)), neg)
            keep = ~alone
            text, pos, negs, lab = filter_all(keep, text, pos, negs, lab)
            rows = np.asarray(t.column("_row"))[keep]
            files = t.column("_file").combine_chunks().filter(pa.array(keep))
            out = mapped_table(text, pos, negs, rows, "", m_label=lab)
            yield out.set_column(out.column_names.index("_file"), "_file", files.dictionary_encode())

    def map_batch(self, batch, src, stats, strict):  # two-pass format: see examples()
        raise NotImplementedError
