"""``nli``: natural-language-inference pairs (SNLI, MultiNLI, XNLI, OCNLI layouts) as SimCSE and
KaLM use them: the premise is the query, each entailment hypothesis a positive, and the premise's
contradiction hypotheses its hard negatives.

    {"premise": "A man is playing a guitar.", "hypothesis": "A man plays music.", "label": 0}

Labels: 0 / "entailment" / "e", 1 / "neutral" / "n", 2 / "contradiction" / "c" (the GLUE and
Hugging Face convention); -1 or another value means no gold label (``skipped.no_gold_label``).
Neutral pairs are skipped (``skipped.neutral``); contradictions of a premise that has no
entailment are skipped (``skipped.no_entailment``). Default task type ``sts`` (symmetric), as for
sentence-transformers' all-nli triplets.

Bounded memory (two passes): pass 1 streams the rows into spill files bucketed by a hash of the
premise (``BUCKETS``); pass 2 groups each bucket in Arrow (``Table.group_by``), so memory holds one
bucket (1/``BUCKETS`` of the dataset). Examples come out bucket by bucket, in file order within one.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kalm.ingest.examples import mapped_table
from kalm.ingest.formats.base import Context, Mapper, filter_all
from kalm.ingest.formats.classification import label_text
from kalm.minhash import hash64

BUCKETS = 32
ENTAIL = ("0", "entailment", "e")
NEUTRAL = ("1", "neutral", "n")
CONTRA = ("2", "contradiction", "c")


class NliMapper(Mapper):
    name = "nli"
    task_type = "sts"
    text_fields = ("premise", "hypothesis")

    def labelled(self, batch, src, stats, strict):
        chk = self.rowcheck(batch, src, stats, strict)
        p, h = chk.text("premise"), chk.text("hypothesis")
        raw = chk.raw("label")
        labels, bad = label_text(raw) if raw is not None else (pa.nulls(chk.n, pa.string()), np.zeros(chk.n, bool))
        chk.drop("label_not_text", bad)
        keep = chk.keep()
        lab = pc.utf8_lower(labels)
        kind = np.full(chk.n, "none", dtype=object)
        for name, values in (("entailment", ENTAIL), ("neutral", NEUTRAL), ("contradiction", CONTRA)):
            kind[np.asarray(pc.fill_null(pc.is_in(lab, value_set=pa.array(values)), False))] = name
        stats.count("skipped", "neutral", int((keep & (kind == "neutral")).sum()))
        stats.count("skipped", "no_gold_label", int((keep & (kind == "none")).sum()))
        keep &= (kind == "entailment") | (kind == "contradiction")
        p, h, rows = filter_all(keep, p, h, batch.rows)
        return p, h, kind[keep] == "entailment", rows

    def check(self, src, source, ctx):
        from kalm.ingest.fields import SourceStats

        head = next(iter(source.batches(ctx.batch_size, self.hint(src))), None)
        if head is not None:
            self.labelled(head, src, SourceStats(src.name), strict=True)

    def examples(self, src, source, stats, ctx: Context):
        schema = pa.schema([("premise", pa.string()), ("hypothesis", pa.string()), ("entail", pa.bool_()),
                            ("_row", pa.int64()), ("_file", pa.string())])
        with ctx.tempdir() as tmp:
            writers = [pq.ParquetWriter(f"{tmp}/b{b:03d}.parquet", schema) for b in range(BUCKETS)]
            try:
                for i, batch in enumerate(source.batches(ctx.batch_size, self.hint(src))):
                    stats.rows_read += batch.table.num_rows
                    if batch.file not in stats.files:
                        stats.files.append(batch.file)
                    p, h, entail, rows = self.labelled(batch, src, stats, strict=(i == 0))
                    t = pa.table({"premise": p, "hypothesis": h, "entail": pa.array(entail),
                                  "_row": pa.array(rows, pa.int64()),
                                  "_file": pa.array([batch.file] * len(rows), pa.string())}, schema=schema)
                    bucket = hash64(p.to_pylist()) % np.uint64(BUCKETS)
                    for b in np.unique(bucket):
                        writers[int(b)].write_table(t.filter(pa.array(bucket == b)))
            finally:
                for w in writers:
                    w.close()
            for b in range(BUCKETS):
                out = self._bucket(pq.read_table(f"{tmp}/b{b:03d}.parquet"), stats)
                if out is not None and out.num_rows:
                    yield out

    def _bucket(self, t: pa.Table, stats) -> pa.Table | None:
        if t.num_rows == 0:
            return None
        entail = t.filter(t.column("entail"))
        contra = t.filter(pc.invert(t.column("entail")))
        negs = contra.group_by("premise", use_threads=False).aggregate([("hypothesis", "list")]) \
            .rename_columns(["premise", "negatives"])
        has_e = pc.is_in(contra.column("premise"), value_set=entail.column("premise").combine_chunks())
        stats.count("skipped", "no_entailment", int(len(has_e) - pc.sum(has_e).as_py() if len(has_e) else 0))
        joined = entail.take(pc.sort_indices(entail, [("_file", "ascending"), ("_row", "ascending")]))
        at = pc.index_in(joined.column("premise"), value_set=negs.column("premise").combine_chunks())
        neg = pc.take(negs.column("negatives").combine_chunks(), at)
        neg = pc.fill_null(neg, pa.scalar([], neg.type)) if neg.null_count else neg
        out = mapped_table(joined.column("premise").combine_chunks(), joined.column("hypothesis").combine_chunks(),
                           neg, np.asarray(joined.column("_row")), "")
        files = joined.column("_file").combine_chunks().dictionary_encode()
        return out.set_column(out.column_names.index("_file"), "_file", files)

    def map_batch(self, batch, src, stats, strict):  # two-pass format: see examples()
        raise NotImplementedError
