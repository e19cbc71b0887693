"""Decontamination: training examples whose query or positive is a text of an evaluation task's
test split are removed before training, counted per dataset and task.

A training text matches an evaluation text when they are equal after :func:`kalm.text.normalize`
(NFKC, case, whitespace, punctuation), or near-duplicates: MinHash Jaccard >= ``threshold`` on
:func:`kalm.text.shingles` (word 3-grams; character bigrams for Chinese/Japanese/Thai), candidates
found by LSH bands and confirmed by the signatures' Jaccard estimate.

Evaluation texts are read from the task folders' documented layouts (../shared/data/README.md):
STS and pair classification: both sentences of ``test.jsonl``; classification: ``test.jsonl``
texts (the train split is training data); clustering: every sentence; reranking: the query,
positives and negatives; retrieval (BEIR): the queries of ``qrels/test.tsv`` and the documents
they judge relevant (score > 0) -- the rest of a shared corpus is not test data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.ingest.config import DecontaminationConfig, EvalTextSource
from kalm.ingest.fields import FIRST_ROWS, SourceStats, row_labels
from kalm.ingest.readers import IngestError, JsonlSource, TsvSource
from kalm.minhash import MinHasher, band_keys, hash64, lsh_bands
from kalm.text import normalize_array

log = logging.getLogger(__name__)


def _strings(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        arr, t = pc.list_flatten(arr), t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr.cast(pa.string()).drop_null()
    return pa.array([], pa.string())


def _read_all(path: Path) -> pa.Table:
    tables = [b.table for b in JsonlSource(path).batches()]
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def eval_texts(folder: Path) -> tuple[str, pa.Array]:
    """(layout kind, the test split's texts) of an evaluation task folder."""
    folder = Path(folder)
    if (folder / "corpus.jsonl").is_file():
        qrels_path = folder / "qrels" / "test.tsv"
        if not qrels_path.is_file():
            raise IngestError(f"{folder}: a retrieval folder needs qrels/test.tsv beside corpus.jsonl")
        qrels = pa.concat_tables([b.table for b in TsvSource(qrels_path).batches()])
        qids = pc.unique(qrels.column("query-id").combine_chunks())
        score = pc.cast(qrels.column("score"), pa.float64(), safe=False)
        dids = pc.unique(qrels.filter(pc.greater(score, 0)).column("corpus-id").combine_chunks())
        texts = []
        for name, ids in (("queries.jsonl", qids), ("corpus.jsonl", dids)):
            for b in JsonlSource(folder / name).batches():
                t = b.table.filter(pc.is_in(b.table.column("_id").cast(pa.string()), value_set=ids))
                if name == "corpus.jsonl":
                    from kalm.ingest.formats.beir import doc_text

                    texts.append(doc_text(t))
                else:
                    texts.append(_strings(t.column("text").combine_chunks()))
        return "retrieval", pa.concat_arrays(texts) if texts else pa.array([], pa.string())
    test = folder / "test.jsonl"
    if not test.is_file():
        raise IngestError(f"{folder}: no test.jsonl (or corpus.jsonl + queries.jsonl + qrels/test.tsv); cannot "
                          "read its test texts. Fix: point decontamination at a task folder, or remove it")
    t = _read_all(test)
    cols = set(t.column_names)
    if {"sentence1", "sentence2"} <= cols:
        kind, names = ("sts" if "score" in cols else "pair_classification"), ["sentence1", "sentence2"]
    elif {"query", "positive"} <= cols:
        kind, names = "reranking", [c for c in ("query", "positive", "negative") if c in cols]
    elif "sentences" in cols:
        kind, names = "clustering", ["sentences"]
    elif "text" in cols:
        kind, names = "classification", ["text"]
    else:
        raise IngestError(f"{test}: columns {sorted(cols)} match no evaluation layout (sentence1/sentence2, text, "
                          "sentences, query/positive)")
    return kind, pa.concat_arrays([_strings(t.column(n).combine_chunks()) for n in names])


class Decontaminator:
    """The evaluation texts of ``cfg.tasks`` indexed for exact and near-duplicate lookup."""

    def __init__(self, cfg: DecontaminationConfig):
        self.cfg = cfg
        self.hasher = MinHasher(cfg.num_perm)
        self.bands, self.rows = lsh_bands(cfg.threshold, cfg.num_perm)
        self.tasks: list[str] = []
        self.summary: dict[str, dict[str, Any]] = {}
        exact, task_of_exact, sigs, task_of_sig = [], [], [], []
        for i, t in enumerate(cfg.tasks):
            kind, texts = eval_texts(t.path)
            norm = normalize_array(texts)
            norm = norm.filter(pc.greater(pc.utf8_length(norm), 0))
            uniq = pc.unique(norm).to_pylist()
            self.tasks.append(t.name)
            self.summary[t.name] = {"folder": str(t.path), "kind": kind, "texts": len(uniq)}
            exact.append(hash64(uniq))
            task_of_exact.append(np.full(len(uniq), i, dtype=np.int32))
            sigs.append(self.hasher.text_signatures(pa.array(uniq, pa.string())))
            task_of_sig.append(np.full(len(uniq), i, dtype=np.int32))
        keys = np.concatenate(exact) if exact else np.array([], np.uint64)
        order = np.argsort(keys, kind="stable")
        self._exact_keys, self._exact_task = keys[order], np.concatenate(task_of_exact or [np.array([], np.int32)])[order]
        self._sigs = np.concatenate(sigs) if sigs else np.zeros((0, cfg.num_perm), np.uint32)
        self._sig_task = np.concatenate(task_of_sig) if task_of_sig else np.array([], np.int32)
        bk = band_keys(self._sigs, self.bands, self.rows)
        flat = bk.ravel()
        owner = np.repeat(np.arange(len(self._sigs)), self.bands)
        order = np.argsort(flat, kind="stable")
        self._band_keys, self._band_owner = flat[order], owner[order]
        self.removed: dict[str, int] = {name: 0 for name in self.tasks}

    def _exact(self, keys: np.ndarray) -> np.ndarray:
        """Task index of each key's exact match, -1 when none."""
        out = np.full(len(keys), -1, dtype=np.int64)
        if not len(self._exact_keys):
            return out
        pos = np.searchsorted(self._exact_keys, keys)
        pos[pos == len(self._exact_keys)] = 0
        hit = self._exact_keys[pos] == keys
        out[hit] = self._exact_task[pos[hit]]
        return out

    def _near(self, sigs: np.ndarray) -> np.ndarray:
        """Task index of each signature's near-duplicate (Jaccard estimate >= threshold), -1 when none."""
        out = np.full(len(sigs), -1, dtype=np.int64)
        if not len(self._band_keys) or not len(sigs):
            return out
        keys = band_keys(sigs, self.bands, self.rows)
        flat = keys.ravel()
        lo = np.searchsorted(self._band_keys, flat, "left")
        hi = np.searchsorted(self._band_keys, flat, "right")
        counts = hi - lo
        if not counts.any():
            return out
        rows = np.repeat(np.arange(len(flat)) // self.bands, counts)
        starts = np.repeat(lo, counts)
        offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        cand = self._band_owner[starts + offs]
        pairs = np.unique(np.stack([rows, cand], axis=1), axis=0)
        est = (sigs[pairs[:, 0]] == self._sigs[pairs[:, 1]]).mean(axis=1)
        ok = pairs[est >= self.cfg.threshold]
        out[ok[::-1, 0]] = self._sig_task[ok[::-1, 1]]  # reversed: the first (lowest) eval text wins
        return out

    def apply(self, table: pa.Table, stats: SourceStats,
              sigs: Optional[tuple[np.ndarray, np.ndarray]] = None) -> tuple[pa.Table, np.ndarray]:
        """``table`` (example schema) without contaminated examples, and the mask of rows kept; counts
        the removed ones per task in ``stats.decontaminated``. ``sigs``: the query and positive MinHash
        signatures when already computed (same ``num_perm``)."""
        keep = np.ones(table.num_rows, dtype=bool)
        if table.num_rows == 0 or not self.tasks:
            return table, keep
        task = np.full(table.num_rows, -1, dtype=np.int64)
        for col in ("query", "positive"):
            hit = self._exact(hash64(normalize_array(table.column(col).combine_chunks()).to_pylist()))
            task = np.where(task < 0, hit, task)
        for k, col in enumerate(("query", "positive")):
            todo = np.flatnonzero(task < 0)
            if not len(todo):
                break
            if sigs is not None:
                sig = sigs[k][todo]
            else:
                sig = self.hasher.text_signatures(table.column(col).combine_chunks().take(pa.array(todo)))
            hit = self._near(sig)
            task[todo] = np.where(task[todo] < 0, hit, task[todo])
        bad = task >= 0
        if not bad.any():
            return table, keep
        for i in np.unique(task[bad]):
            name = self.tasks[int(i)]
            idx = np.flatnonzero(task == i)
            stats.decontaminated[name] += len(idx)
            self.removed[name] += len(idx)
            stats.note_rows(f"decontaminated:{name}", row_labels(table, idx[:FIRST_ROWS]))
        return table.filter(pa.array(~bad)), ~bad


def decontamination_report(d: Optional[Decontaminator], cfg: DecontaminationConfig) -> dict[str, Any]:
    if not cfg.enabled:
        return {"enabled": False}
    if d is None:
        return {"enabled": True, "tasks": {}, "not_checked": cfg.unchecked,
                "note": "no evaluation task with a local folder to check against"}
    return {"enabled": True, "threshold": cfg.threshold, "num_perm": cfg.num_perm, "bands": d.bands, "rows": d.rows,
            "tasks": {name: {**d.summary[name], "removed": d.removed[name]} for name in d.tasks},
            "not_checked": cfg.unchecked}


def tasks_from_evaluate(eval_tasks: list[Any], data_dir: Optional[Path]) -> tuple[list[EvalTextSource], list[str]]:
    """(evaluation tasks with a local folder under ``data_dir``, names of those without one)."""
    out, unchecked = [], []
    for t in eval_tasks:
        local = getattr(t, "local", None)
        if local and data_dir is not None and (Path(data_dir) / local).is_dir():
            out.append(EvalTextSource(name=t.name, path=(Path(data_dir) / local).resolve()))
        else:
            unchecked.append(t.name)
    return out, unchecked
