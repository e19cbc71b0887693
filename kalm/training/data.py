"""Training data: example shards -> one tokenized, memory-mapped Arrow file -> step batches.

Tokenization happens once, before any training process starts, and is cached by content:

    path = prepare_training_data(cfg, inputs, out_dir)      # tokens-<key>.arrow (Arrow IPC file)
    data = TrainingData(path)                               # memory-mapped: nothing is loaded
    collate = Collator(data, cfg, pad_id=tokenizer.pad_token_id)
    batch = collate(indices, step)                          # padded tensors for one step

``prepare_training_data`` streams the example shards (:func:`kalm.schema.read_batches`, one
record batch in memory at a time), puts the task instruction on the sides the instruction
policy says (:meth:`TrainConfig.instruction_policy`, the policy the export and evaluation
use), tokenizes queries, positives and hard negatives with the student's fast tokenizer
(batched; its Rust threads use every core) and appends them to one Arrow IPC file written
atomically. The file's name hashes the inputs' content, the tokenizer, ``max_length``, the
pooling (EOS appended for last-token pooling) and the instruction policy: a rerun, a resumed
run and every torchrun rank read it instead of tokenizing again.

Columns (one row per example): ``task_type``, ``task`` (task type/source, the sampler's
task key), ``label`` (class-label id, -1 without one), ``length`` (tokens of the example's
longest text, for length grouping), ``q_ids``/``p_ids`` (token ids), ``n_ids`` (token ids
of each own hard negative), and ``q_hash``/``p_hash``/``n_hash``: 64-bit hashes of the raw
texts (instruction excluded), with which the loss recognises duplicate texts in a batch.

A training process memory-maps the file (``pyarrow.memory_map``): rows are never Python
objects; example lengths and task keys are read as whole columns (one vectorised pass) and
a step touches only its own rows.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.instructions import SYMMETRIC
from kalm.stage import Progress, no_progress
from kalm.tokenization import parallel_tokenizers
from kalm.training.config import TrainConfig

FORMAT_VERSION = "2"  # bump when the file's columns or their meaning change
_BATCH_ROWS = 4096

ARROW_SCHEMA = pa.schema([
    pa.field("task_type", pa.string()),
    pa.field("task", pa.string()),
    pa.field("label", pa.int64()),
    pa.field("length", pa.int32()),
    pa.field("q_ids", pa.list_(pa.int32())),
    pa.field("p_ids", pa.list_(pa.int32())),
    pa.field("n_ids", pa.list_(pa.list_(pa.int32()))),
    pa.field("q_hash", pa.int64()),
    pa.field("p_hash", pa.int64()),
    pa.field("n_hash", pa.list_(pa.int64())),
])


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """Stable 64-bit hashes of ``texts`` (pandas' SipHash with its fixed key: equal in every process)."""
    import pandas as pd

    if len(texts) == 0:
        return np.zeros(0, dtype=np.int64)
    return pd.util.hash_array(np.asarray(texts, dtype=object), categorize=False).view(np.int64)


def _tokenizer_fingerprint(tokenizer, model_path: str) -> list[str]:
    parts = [type(tokenizer).__name__, str(len(tokenizer)), str(getattr(tokenizer, "add_eos_token", False)),
             str(tokenizer.eos_token), str(tokenizer.pad_token)]
    folder = Path(model_path)
    if folder.is_dir():
        from kalm.store import hash_file

        for f in sorted(folder.iterdir()):
            if f.is_file() and (f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens", "added_tokens"))
                                or f.suffix == ".model"):
                parts.append(f"{f.name}:{hash_file(f)}")
    else:
        parts.append(f"hub:{model_path}")
    return parts


def data_key(cfg: TrainConfig, files: Sequence[Path], tokenizer, model_path: str) -> str:
    """Hash of everything the token file depends on: inputs' content, tokenizer, length, pooling, instructions."""
    from kalm.store import hash_file

    h = hashlib.sha256()
    policy = cfg.instruction_policy()
    for part in (FORMAT_VERSION, *_tokenizer_fingerprint(tokenizer, model_path), str(cfg.max_length), cfg.pooling,
                 policy.format, policy.symmetric_key, str(policy.enabled), *[hash_file(f) for f in files]):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:20]


def _label_ids(source: pa.Array, metadata: pa.Array) -> np.ndarray:
    """Class-label id of each row (``metadata.label`` with its source), -1 without one."""
    out = np.full(len(metadata), -1, dtype=np.int64)
    has = pc.match_substring(metadata, '"label"').to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(has):  # only labelled rows pay for JSON parsing
        label = json.loads(metadata[i].as_py()).get("label")
        if label is not None:
            digest = hashlib.sha256(f"{source[i].as_py()}/{label}".encode()).hexdigest()
            out[i] = int(digest[:12], 16)
    return out


def _encode_batch(batch: pa.RecordBatch, tokenizer, cfg: TrainConfig) -> pa.RecordBatch:
    policy = cfg.instruction_policy()
    types = batch.column("task_type").to_pylist()
    instructions = batch.column("instruction").to_pylist()
    queries = batch.column("query").to_pylist()
    positives = batch.column("positive").to_pylist()
    negatives = batch.column("negatives")
    flat_negs = negatives.flatten().to_pylist()
    offsets = negatives.offsets.to_numpy()
    offsets = offsets - offsets[0]  # a sliced array's offsets do not start at 0
    neg_rows = np.repeat(np.arange(len(types)), np.diff(offsets))
    q_texts = [policy.query_text(t, i, q) for t, i, q in zip(types, instructions, queries)]
    p_texts = [policy.document_text(t, i, p) for t, i, p in zip(types, instructions, positives)]
    n_texts = [policy.document_text(types[r], instructions[r], n) for r, n in zip(neg_rows, flat_negs)]

    def ids(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, truncation=True, max_length=cfg.max_length, add_special_tokens=True)["input_ids"] \
            if texts else []

    q_ids, p_ids, n_flat = ids(q_texts), ids(p_texts), ids(n_texts)
    lengths = np.maximum(np.fromiter(map(len, q_ids), np.int32, len(q_ids)),
                         np.fromiter(map(len, p_ids), np.int32, len(p_ids)))
    if n_flat:
        np.maximum.at(lengths, neg_rows, np.fromiter(map(len, n_flat), np.int32, len(n_flat)))
    neg_offsets = pa.array(offsets, pa.int32())  # rows' negatives keep their grouping
    task = pc.binary_join_element_wise(batch.column("task_type"), batch.column("source"), "/")
    return pa.RecordBatch.from_arrays([
        batch.column("task_type"), task,
        pa.array(_label_ids(batch.column("source"), batch.column("metadata")), pa.int64()),
        pa.array(lengths, pa.int32()),
        pa.array(q_ids, pa.list_(pa.int32())), pa.array(p_ids, pa.list_(pa.int32())),
        pa.ListArray.from_arrays(neg_offsets, pa.array(n_flat, pa.list_(pa.int32()))),
        pa.array(text_hashes(queries), pa.int64()), pa.array(text_hashes(positives), pa.int64()),
        pa.ListArray.from_arrays(neg_offsets, pa.array(text_hashes(flat_negs), pa.int64())),
    ], schema=ARROW_SCHEMA)


def prepare_training_data(cfg: TrainConfig, inputs: Sequence[Path], out_dir: Path, model_path: Optional[str] = None,
                          progress: Progress = no_progress) -> Path:
    """Tokenize the examples of ``inputs`` once into ``out_dir/tokens-<key>.arrow`` (or find it there).

    Args:
        cfg: the train config (student, max_length, pooling, instruction policy).
        inputs: Parquet files or shard folders in the example schema (:mod:`kalm.schema`).
        out_dir: folder of token files (kept across runs: the name is the content key).
        model_path: the student's local folder or hub id (default: ``transformers_path(cfg.student)``).
        progress: called with the fraction of rows done.

    Returns:
        The Arrow IPC file's path; open it with :class:`TrainingData`.

    Raises:
        ValueError: the inputs hold no examples (names the files and the likely cause).
    """
    from kalm.schema import check_table, count_rows, read_batches, shard_files
    from kalm.store import atomic_path, atomic_write_json
    from kalm.training.model import load_tokenizer

    if model_path is None:
        from kalm.models import transformers_path

        model_path = transformers_path(cfg.student)
    files = shard_files(inputs)
    total = count_rows(files)
    if total == 0:
        raise ValueError(f"no training examples in {[str(p) for p in inputs]}: the filter kept nothing? "
                         "check the filter's drop counts, loosen filter settings or add data")
    tokenizer = load_tokenizer(model_path, cfg.pooling)
    path = Path(out_dir) / f"tokens-{data_key(cfg, files, tokenizer, model_path)}.arrow"
    if path.exists() and path.with_suffix(".json").exists():
        return path
    done, counts = 0, Counter()
    with parallel_tokenizers():  # this process forks nothing while tokenizing
        with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_file(sink, ARROW_SCHEMA) as writer:
            for f in files:
                for batch in read_batches([f], batch_size=_BATCH_ROWS):
                    if batch.num_rows == 0:
                        continue
                    batch = check_table(pa.Table.from_batches([batch]), str(f)).combine_chunks().to_batches()[0]
                    writer.write_batch(_encode_batch(batch, tokenizer, cfg))
                    pairs = pa.table({"t": batch.column("task_type"), "i": batch.column("instruction")})
                    for r in pairs.group_by(["t", "i"]).aggregate([("t", "count")]).to_pylist():
                        counts[(r["t"], r["i"])] += r["t_count"]
                    done += batch.num_rows
                    progress(done / total, f"tokenized {done}/{total} examples")
            # The sidecar lands before the token file's rename, so a token file always has one.
            atomic_write_json(path.with_suffix(".json"), {
                "rows": done, "inputs": [str(f) for f in files],
                "instruction_counts": [[t, i, n] for (t, i), n in sorted(counts.items())]})
    return path


class TrainingData:
    """The token file of :func:`prepare_training_data`, memory-mapped (zero-copy numpy views per record batch)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))
        self.batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        sizes = np.array([b.num_rows for b in self.batches], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.num_rows = int(self.starts[-1])
        if self.num_rows == 0:
            raise ValueError(f"{self.path}: no examples")
        self._cols = [self._views(b) for b in self.batches]
        self.meta = json.loads(self.path.with_suffix(".json").read_text())

    def instructions(self) -> dict[str, str]:
        """Task type -> its most common non-empty instruction (ties: the alphabetically first), the one
        the exported prompts carry."""
        best: dict[str, tuple[int, str]] = {}
        for t, i, n in self.meta["instruction_counts"]:
            if i and (t not in best or (-n, i) < (-best[t][0], best[t][1])):
                best[t] = (n, i)
        return {t: i for t, (n, i) in best.items()}

    @staticmethod
    def _views(b: pa.RecordBatch) -> dict[str, Any]:
        def lst(name: str) -> tuple[np.ndarray, np.ndarray]:
            a = b.column(name)
            return a.offsets.to_numpy(), a.values.to_numpy()

        n = b.column("n_ids")
        return {"q_ids": lst("q_ids"), "p_ids": lst("p_ids"), "n_outer": n.offsets.to_numpy(),
                "n_ids": (n.values.offsets.to_numpy(), n.values.values.to_numpy()),
                "n_hash": lst("n_hash"), "q_hash": b.column("q_hash").to_numpy(),
                "p_hash": b.column("p_hash").to_numpy(), "label": b.column("label").to_numpy()}

    def __len__(self) -> int:
        return self.num_rows

    def column(self, name: str) -> pa.ChunkedArray:
        return pa.chunked_array([b.column(name) for b in self.batches])

    def lengths(self) -> np.ndarray:
        """Tokens of each example's longest text (query, positive, own negatives), int32 [N]."""
        return self.column("length").to_numpy()

    def task_ids(self) -> tuple[np.ndarray, list[str]]:
        """Each example's task (``task_type/source``) as an index into the returned sorted names."""
        enc = self.column("task").combine_chunks().dictionary_encode()
        names = enc.dictionary.to_pylist()
        order = np.argsort(names)  # sorted names: the ids do not depend on row order
        rank = np.empty(len(names), dtype=np.int32)
        rank[order] = np.arange(len(names), dtype=np.int32)
        return rank[enc.indices.to_numpy()], [names[i] for i in order]

    def flags(self, task_types: Sequence[str]) -> np.ndarray:
        """Bool [N]: whether each example's task type is one of ``task_types``."""
        return pc.is_in(self.column("task_type"), value_set=pa.array(list(task_types), pa.string())).to_numpy(
            zero_copy_only=False)

    def _locate(self, i: int) -> tuple[dict[str, Any], int]:
        b = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self._cols[b], int(i - self.starts[b])

    def row(self, i: int) -> dict[str, Any]:
        """One example's token ids and hashes: ``q``, ``p`` (int32 arrays), ``n`` (list of them),
        ``q_hash``, ``p_hash``, ``n_hash`` (ints), ``label``."""
        c, r = self._locate(i)

        def ids(name: str) -> np.ndarray:
            off, val = c[name]
            return val[off[r]:off[r + 1]]

        lo, hi = c["n_outer"][r], c["n_outer"][r + 1]
        noff, nval = c["n_ids"]
        hoff, hval = c["n_hash"]
        return {"q": ids("q_ids"), "p": ids("p_ids"), "n": [nval[noff[j]:noff[j + 1]] for j in range(lo, hi)],
                "q_hash": int(c["q_hash"][r]), "p_hash": int(c["p_hash"][r]),
                "n_hash": [int(x) for x in hval[hoff[r]:hoff[r + 1]]], "label": int(c["label"][r])}


def pad(seqs: Sequence[np.ndarray], pad_id: int) -> dict[str, "torch.Tensor"]:
    """Right-pad token id arrays to the longest: ``input_ids`` and ``attention_mask``, int64 [n, L]."""
    import torch

    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = s
        mask[r, :len(s)] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


class Collator:
    """Builds one step's tensors from example indices of a :class:`TrainingData`.

    Each query comes with its positive and exactly ``num_hard_negatives`` hard negatives: its
    own, topped up with positives of random other examples of the same task (drawn with a
    generator seeded by seed, step and example, so the draw does not depend on which process,
    or how many, collates the example).

    Returns a dict: ``query``/``docs`` token tensors (docs: B positives, then k negatives per
    query), ``labels`` [B] (class-label ids, -1 without), ``in_batch`` [B] (other examples'
    documents are negatives), ``symmetric`` [B] (symmetric task type), ``q_hash`` [B] and
    ``d_hash`` [B(1+k)] (raw-text hashes for duplicate masking), all int64/bool tensors.
    """

    def __init__(self, data: TrainingData, cfg: TrainConfig, pad_id: int):
        self.data, self.cfg, self.pad_id = data, cfg, int(pad_id)
        self.in_batch = data.flags(cfg.in_batch_negatives_for)
        self.symmetric = data.flags(sorted(SYMMETRIC))
        tasks, _ = data.task_ids()
        self._by_task = np.argsort(tasks, kind="stable")
        self._task_bounds = np.searchsorted(tasks[self._by_task], np.arange(tasks.max() + 2))
        self._tasks = tasks

    def _negatives(self, i: int, row: dict[str, Any], rng: "random.Random") -> list[tuple[np.ndarray, int]]:
        k = self.cfg.num_hard_negatives
        negs = list(zip(row["n"], row["n_hash"]))[:k]
        t = self._tasks[i]
        lo, hi = int(self._task_bounds[t]), int(self._task_bounds[t + 1])
        for _ in range(100 * k):
            if len(negs) >= k:
                break
            other = self.data.row(int(self._by_task[lo + rng.randrange(hi - lo)]))
            if other["p_hash"] != row["p_hash"]:
                negs.append((other["p"], other["p_hash"]))
        while len(negs) < k:  # a task whose every positive is this text: the loss masks the duplicate
            negs.append((row["p"], row["p_hash"]))
        return negs

    def __call__(self, indices: Sequence[int], step: int) -> dict[str, Any]:
        import random

        import torch

        rows = [self.data.row(int(i)) for i in indices]
        negs = [n for i, r in zip(indices, rows)
                for n in self._negatives(int(i), r, random.Random(f"{self.cfg.seed}-{step}-{int(i)}"))]
        idx = np.asarray(indices, dtype=np.int64)
        return {
            "query": pad([r["q"] for r in rows], self.pad_id),
            "docs": pad([r["p"] for r in rows] + [n for n, _ in negs], self.pad_id),
            "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long),
            "in_batch": torch.from_numpy(self.in_batch[idx].copy()),
            "symmetric": torch.from_numpy(self.symmetric[idx].copy()),
            "q_hash": torch.tensor([r["q_hash"] for r in rows], dtype=torch.long),
            "d_hash": torch.tensor([r["p_hash"] for r in rows] + [h for _, h in negs], dtype=torch.long),
        }
