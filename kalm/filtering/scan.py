"""Pass 1 of the filter: stream the input once, keep numbers only.

Every text occurrence (a row's query as the teacher reads it, its positive, its negatives, in
that order) is appended to a memory-mapped Arrow IPC *text table*; the rest of the stage works
on numpy arrays of 16-byte content keys, 8-byte hashes of normalised texts (lower case, one space
between words, as ``norm_text``) and occurrence indices, and reads a text back only when it is
embedded or written out. Memory: ~100 bytes per example plus one record batch.

Given negatives that are their own positive or query (after normalisation), or repeat an earlier
negative of the row, are marked for removal here (``NEG_*`` reasons): they never reach training
(user case 06: a copy of the positive as its hard negative pushes a query away from its answer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from kalm.filtering.store import text_keys
from kalm.schema import read_batches
from kalm.stage import Progress, no_progress

QUERY_FORMAT = "Instruct: {instruction}\nQuery: {query}"
_WS = r"[\s\x{0B}\x{1C}-\x{1F}\x{85}\p{Z}]+"  # the characters Python's str.split() splits on

NEG_KEEP, NEG_EQUALS_POSITIVE, NEG_EQUALS_QUERY, NEG_DUPLICATE, NEG_OTHER_POSITIVE = range(5)
NEG_REASONS = {NEG_EQUALS_POSITIVE: "negative_equals_positive", NEG_EQUALS_QUERY: "negative_equals_query",
               NEG_DUPLICATE: "duplicate_negative", NEG_OTHER_POSITIVE: "negative_is_another_right_answer"}
COLUMNS = ["task_type", "source", "instruction", "query", "positive", "negatives", "metadata"]


def norm_text(text: str) -> str:
    """The normalisation texts are compared under: lower case, runs of whitespace as one space, trimmed."""
    return " ".join(text.lower().split())


def _norm_array(a: pa.Array) -> pa.Array:
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(a), pattern=_WS, replacement=" "))


def hash64(strings: Sequence[str]) -> np.ndarray:
    """[n] uint64 xxh3-64 of each string (0 is reserved for 'none', so it never occurs)."""
    import xxhash

    h = np.fromiter((xxhash.xxh3_64_intdigest(s.encode("utf-8")) for s in strings), dtype=np.uint64,
                    count=len(strings))
    h[h == 0] = 1
    return h


@dataclass
class Scan:
    """What pass 1 keeps of N rows with M given negatives (all numpy, row order of the input)."""

    rows: int
    text_table: Path            # IPC file, column "text": per row, query (as embedded), positive, negatives
    row_start: np.ndarray       # [N+1] int64 occurrence index of each row's first text
    pool: np.ndarray            # [N] int32 index into pool_names
    pool_names: list[str]
    task: np.ndarray            # [N] int16 index into task_names
    task_names: list[str]
    q_key: np.ndarray           # [N, 2] key of the query as embedded (instruction prepended)
    qraw_key: np.ndarray        # [N, 2] key of the raw query text (to find it among candidates)
    qn: np.ndarray              # [N] uint64 hash of the normalised query
    p_key: np.ndarray           # [N, 2]
    pn: np.ndarray              # [N]
    label: np.ndarray           # [N] uint64 hash of metadata "label" (0: none)
    group: np.ndarray           # [N] uint64 hash of metadata "group" (0: none)
    neg_ptr: np.ndarray         # [N+1] int64 row i's negatives are neg_*[neg_ptr[i]:neg_ptr[i+1]]
    neg_key: np.ndarray         # [M, 2]
    neg_norm: np.ndarray        # [M]
    neg_drop: np.ndarray        # [M] int8 NEG_* reason (NEG_KEEP: kept)

    @property
    def neg_occ(self) -> np.ndarray:
        """[M] occurrence index of every given negative."""
        counts = np.diff(self.neg_ptr)
        return np.repeat(self.row_start[:-1] + 2 - self.neg_ptr[:-1], counts) + np.arange(len(self.neg_key))

    def texts(self) -> "TextTable":
        return TextTable(self.text_table)


class TextTable:
    """Random access to the scan's texts by occurrence index (memory-mapped Arrow IPC)."""

    def __init__(self, path: Path):
        self._source = pa.memory_map(str(path))
        self._chunks = list(ipc.open_file(self._source).read_all().column("text").chunks)
        self._starts = np.cumsum([0] + [len(c) for c in self._chunks])

    def take(self, occ: np.ndarray) -> list[str]:
        """The texts at occurrence indices ``occ``, in that order. Taken chunk by chunk: pyarrow's
        ``ChunkedArray.take`` concatenates every chunk first (the whole table copied per call)."""
        occ = np.asarray(occ, dtype=np.int64)
        order = np.argsort(occ, kind="stable")
        ordered = occ[order]
        chunk = np.searchsorted(self._starts, ordered, side="right") - 1
        bounds = np.searchsorted(chunk, np.arange(len(self._chunks) + 1))
        values: list[str] = []
        for c in np.flatnonzero(np.diff(bounds)):
            at = ordered[bounds[c]:bounds[c + 1]] - self._starts[c]
            values += self._chunks[c].take(pa.array(at)).to_pylist()
        out = np.empty(len(occ), dtype=object)
        out[order] = values
        return out.tolist()

    def close(self) -> None:
        self._chunks = []
        self._source.close()


def _meta_hash(metadata: pa.Array, key: str) -> np.ndarray:
    """[n] hash of ``metadata[key]`` (JSON), 0 where absent; only rows mentioning the key are parsed."""
    out = np.zeros(len(metadata), np.uint64)
    maybe = np.flatnonzero(pc.fill_null(pc.match_substring(metadata, f'"{key}"'), False).to_numpy(zero_copy_only=False))
    if len(maybe):
        texts = metadata.take(pa.array(maybe)).to_pylist()
        values = [json.loads(m or "{}").get(key) for m in texts]
        has = np.array([v is not None for v in values])
        if has.any():
            out[maybe[has]] = hash64([f"{key}\0{json.dumps(v, sort_keys=True)}" for v, h in zip(values, has) if h])
    return out


def scan(inputs: Sequence[Path], work_dir: Path, use_instructions: bool, pool_scope: str,
         batch_size: int = 65_536, progress: Optional[Progress] = None, total: int = 0) -> Scan:
    """Reads ``inputs`` (Parquet files / shard folders in the example schema) once, batch by batch."""
    progress = progress or no_progress
    work_dir.mkdir(parents=True, exist_ok=True)
    table_path = work_dir / "texts.arrow"
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (
        "pool", "task", "q_key", "qraw_key", "qn", "p_key", "pn", "label", "group", "neg_count", "neg_key",
        "neg_norm", "neg_drop")}
    pools: dict[str, int] = {}
    tasks: dict[str, int] = {}
    rows = 0
    schema = pa.schema([pa.field("text", pa.large_string())])
    with pa.OSFile(str(table_path), "wb") as sink, ipc.new_file(sink, schema) as writer:
        for batch in read_batches(list(inputs), batch_size, columns=COLUMNS):
            n = batch.num_rows
            col = {name: batch.column(name) for name in COLUMNS}
            query, positive, instruction = col["query"], col["positive"], col["instruction"]
            if use_instructions:
                formatted = pc.binary_join_element_wise("Instruct: ", instruction, "\nQuery: ", query, "")
                q_text = pc.if_else(pc.equal(pc.fill_null(instruction, ""), ""), query, formatted)
            else:
                q_text = query
            negs = col["negatives"]
            counts = pc.list_value_length(negs).to_numpy(zero_copy_only=False).astype(np.int64)
            neg_values = pc.list_flatten(negs)
            # The text table: per row [query as embedded, positive, *negatives].
            starts = np.concatenate([[0], np.cumsum(counts + 2)])
            idx = np.empty(starts[-1], np.int64)
            idx[starts[:-1]] = np.arange(n)
            idx[starts[:-1] + 1] = n + np.arange(n)
            neg_slots = np.ones(starts[-1], bool)
            neg_slots[starts[:-1]] = neg_slots[starts[:-1] + 1] = False
            idx[neg_slots] = 2 * n + np.arange(len(neg_values))
            allt = pa.concat_arrays([q_text.cast(pa.large_string()), positive.cast(pa.large_string()),
                                     neg_values.cast(pa.large_string())])
            writer.write_batch(pa.record_batch([allt.take(pa.array(idx))], schema=schema))

            q_list, qraw_list, p_list, n_list = (q_text.to_pylist(), query.to_pylist(), positive.to_pylist(),
                                                 neg_values.to_pylist())
            parts["q_key"].append(text_keys(q_list))
            parts["qraw_key"].append(text_keys(qraw_list) if use_instructions else parts["q_key"][-1])
            parts["p_key"].append(text_keys(p_list))
            parts["neg_key"].append(text_keys(n_list))
            qn = hash64(_norm_array(query).to_pylist())
            pn = hash64(_norm_array(positive).to_pylist())
            nn = hash64(_norm_array(neg_values).to_pylist()) if len(neg_values) else np.zeros(0, np.uint64)
            parts["qn"].append(qn)
            parts["pn"].append(pn)
            parts["neg_norm"].append(nn)
            parts["neg_count"].append(counts)
            parts["neg_drop"].append(_negative_reasons(counts, qn, pn, nn))
            parts["label"].append(_meta_hash(col["metadata"], "label"))
            parts["group"].append(_meta_hash(col["metadata"], "group"))
            task_type = col["task_type"].to_pylist()
            names = ([f"{t}/{s}" for t, s in zip(task_type, col["source"].to_pylist())] if pool_scope == "task"
                     else ["all"] * n)
            parts["pool"].append(np.array([pools.setdefault(k, len(pools)) for k in names], np.int32))
            parts["task"].append(np.array([tasks.setdefault(t, len(tasks)) for t in task_type], np.int16))
            rows += n
            progress(min(1.0, rows / max(total, 1)), f"scanned {rows} rows")

    def cat(name: str, dtype, shape=(0,)) -> np.ndarray:
        return np.concatenate(parts[name]) if parts[name] else np.zeros(shape, dtype)

    counts = cat("neg_count", np.int64)
    neg_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    row_start = np.concatenate([[0], np.cumsum(counts + 2)]).astype(np.int64)
    return Scan(rows=rows, text_table=table_path, row_start=row_start, pool=cat("pool", np.int32),
                pool_names=list(pools), task=cat("task", np.int16), task_names=list(tasks),
                q_key=cat("q_key", np.uint64, (0, 2)), qraw_key=cat("qraw_key", np.uint64, (0, 2)),
                qn=cat("qn", np.uint64), p_key=cat("p_key", np.uint64, (0, 2)), pn=cat("pn", np.uint64),
                label=cat("label", np.uint64), group=cat("group", np.uint64), neg_ptr=neg_ptr,
                neg_key=cat("neg_key", np.uint64, (0, 2)), neg_norm=cat("neg_norm", np.uint64),
                neg_drop=cat("neg_drop", np.int8))


def _negative_reasons(counts: np.ndarray, qn: np.ndarray, pn: np.ndarray, nn: np.ndarray) -> np.ndarray:
    """[M] why each given negative goes: equal to its positive or query (normalised), or a repeat in its row."""
    row = np.repeat(np.arange(len(counts)), counts)
    out = np.zeros(len(nn), np.int8)
    if not len(nn):
        return out
    # First occurrence of each (row, normalised text): later ones repeat it.
    order = np.lexsort((np.arange(len(nn)), nn, row))
    same = np.zeros(len(nn), bool)
    same[1:] = (row[order][1:] == row[order][:-1]) & (nn[order][1:] == nn[order][:-1])
    out[order[same]] = NEG_DUPLICATE
    out[nn == qn[row]] = NEG_EQUALS_QUERY
    out[nn == pn[row]] = NEG_EQUALS_POSITIVE
    return out
