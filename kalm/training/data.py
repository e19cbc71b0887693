"""Training examples -> token batches: queries with instructions, positives + hard negatives."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from kalm.schema import read_examples
from kalm.training.config import TrainConfig


def load_examples(inputs: Sequence[Path]) -> list[dict[str, Any]]:
    rows = read_examples(list(inputs)).to_pylist()
    if not rows:
        raise ValueError(f"no training examples in {[str(p) for p in inputs]}: the filter kept nothing? "
                         "lower filter.top_k's strictness or add data")
    return rows


def task_key(row: dict[str, Any]) -> str:
    """What counts as one task for batch sampling: the task type and the data source."""
    return f"{row['task_type']}/{row['source']}"


def label_id(row: dict[str, Any]) -> int:
    """A stable id of the example's class label (classification data), -1 when it has none."""
    import hashlib
    import json

    label = json.loads(row.get("metadata") or "{}").get("label")
    if label is None:
        return -1
    digest = hashlib.sha256(f"{row['source']}/{label}".encode()).hexdigest()
    return int(digest[:12], 16)


class TokenTable:
    """Every distinct text of the training set tokenized once, kept in an Arrow file.

    ``datasets`` writes the table to ``cache_dir`` under a name made of the texts, the
    tokenizer and the max length; a resumed or repeated run (and every torchrun rank after the
    first) memory-maps it instead of tokenizing again. Batches then only pad.
    """

    def __init__(self, tokenizer, texts: Sequence[str], max_length: int, cache_dir: Optional[Path] = None):
        from datasets import Dataset

        self.tok = tokenizer
        # Padding pre-tokenized ids is the point here; the fast tokenizer's advice to call it instead does not apply.
        getattr(tokenizer, "deprecation_warnings", {})["Asking-to-pad-a-fast-tokenizer"] = True
        unique = list(dict.fromkeys(texts))
        self.index = {t: i for i, t in enumerate(unique)}

        def tokenize(batch: dict[str, list[str]]) -> dict[str, Any]:
            return {"input_ids": tokenizer(batch["text"], truncation=True, max_length=max_length)["input_ids"]}

        kwargs: dict[str, Any] = {}
        if cache_dir is not None:
            key = hashlib.sha256()
            for part in (type(tokenizer).__name__, tokenizer.name_or_path, str(len(tokenizer)),
                         str(getattr(tokenizer, "add_eos_token", False)), str(max_length), *unique):
                key.update(part.encode() + b"\0")
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            kwargs["cache_file_name"] = str(Path(cache_dir) / f"tokens-{key.hexdigest()[:16]}.arrow")
        self.from_cache = bool(kwargs) and Path(kwargs["cache_file_name"]).exists()
        table = Dataset.from_dict({"text": unique}).map(tokenize, batched=True, batch_size=1000,
                                                       remove_columns=["text"], **kwargs)
        self.ids: list[list[int]] = table["input_ids"]

    def batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Padded to the longest of ``texts`` (the tokenizer's padding side), as calling it would."""
        enc = self.tok.pad({"input_ids": [self.ids[self.index[t]] for t in texts]}, padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class Collator:
    """Builds one step's token tensors from example rows (dynamic padding to the longest text).

    With a ``cache_dir``, texts are tokenized once up front (``TokenTable``) and batches only pad."""

    def __init__(self, tokenizer, cfg: TrainConfig, rows: list[dict[str, Any]], cache_dir: Optional[Path] = None,
                 pretokenize: bool = True):
        self.tok, self.cfg, self.rows = tokenizer, cfg, rows
        self.table: Optional[TokenTable] = None
        if pretokenize:
            self.table = TokenTable(tokenizer, [t for r in rows for t in self.texts(r)], cfg.max_length, cache_dir)

    def texts(self, row: dict[str, Any]) -> list[str]:
        """Every text of an example as written: query with instruction, positive, own negatives."""
        return [self.query_text(row), row["positive"], *(row.get("negatives") or [])]

    def query_text(self, row: dict[str, Any]) -> str:
        if self.cfg.use_instructions and row.get("instruction"):
            return self.cfg.query_instruction_format.format(instruction=row["instruction"], query=row["query"])
        return row["query"]

    def negatives(self, row: dict[str, Any], rng: random.Random) -> list[str]:
        """Exactly k hard negatives: the example's own, topped up with random other positives.

        ``rng`` is seeded per example and step, so the draw does not depend on which process
        (or how many) collates the example."""
        k = self.cfg.num_hard_negatives
        negs = list(row.get("negatives") or [])[:k]
        while len(negs) < k:
            other = self.rows[rng.randrange(len(self.rows))]["positive"]
            if other != row["positive"]:
                negs.append(other)
        return negs

    def lengths(self) -> list[int]:
        """Tokens of each example's longest text (query with instruction, positive, own negatives)."""
        if self.table is None:
            raise ValueError("example lengths need the token table: construct the Collator with pretokenize=True")
        ids, index = self.table.ids, self.table.index
        return [max(len(ids[index[t]]) for t in self.texts(r)) for r in self.rows]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.table is not None:
            return self.table.batch(texts)
        enc = self.tok(texts, padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def __call__(self, indices: list[int], step: int) -> dict[str, Any]:
        rows = [self.rows[i] for i in indices]
        negs = [n for i, r in zip(indices, rows)
                for n in self.negatives(r, random.Random(f"{self.cfg.seed}-{step}-{i}"))]
        return {
            "labels": torch.tensor([label_id(r) for r in rows]),
            "query": self.tokenize([self.query_text(r) for r in rows]),
            "docs": self.tokenize([r["positive"] for r in rows] + negs),
            "in_batch": torch.tensor([r["task_type"] in self.cfg.in_batch_negatives_for for r in rows]),
        }
