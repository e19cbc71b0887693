"""Map a dataset's raw rows to examples, by the source's ``format``."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any, Callable

from kalm.ingest.config import DatasetSource
from kalm.ingest.readers import IngestError
from kalm.schema import Example

DEFAULT_TASK_TYPE = {"pairs": "retrieval", "sts": "sts", "classification": "classification"}


def _field(src: DatasetSource, row: dict[str, Any], name: str, default: str | None = None, i: int = 0) -> Any:
    column = src.fields.get(name, default or name)
    if column not in row:
        raise IngestError(
            f"dataset {src.name!r}, row {i}: no column {column!r} for field {name!r}; "
            f"columns are {sorted(row)}. Map it with fields: {{{name}: <column>}}"
        )
    return row[column]


def _example(src: DatasetSource, task_type: str, query: str, positive: str, negatives: list[str], **meta: Any) -> Example:
    return Example(
        task_type=task_type, instruction=src.instruction, query=str(query).strip(), positive=str(positive).strip(),
        negatives=[str(n).strip() for n in negatives], language=src.language, source=src.name,
        metadata={"in_domain": src.in_domain, **meta},
    )


def map_pairs(src: DatasetSource, rows: list[dict[str, Any]], rng: random.Random) -> list[Example]:
    task_type = src.task_type or DEFAULT_TASK_TYPE["pairs"]
    out = []
    for i, row in enumerate(rows):
        negs = row.get(src.fields.get("negatives", "negatives")) or []
        negs = [negs] if isinstance(negs, str) else list(negs)
        out.append(_example(src, task_type, _field(src, row, "query", i=i), _field(src, row, "positive", i=i), negs))
    return out


def map_sts(src: DatasetSource, rows: list[dict[str, Any]], rng: random.Random) -> list[Example]:
    """STS pairs scoring at least ``min_score`` (0-5 scale) become query/positive pairs."""
    task_type = src.task_type or DEFAULT_TASK_TYPE["sts"]
    out = []
    for i, row in enumerate(rows):
        score = float(_field(src, row, "score", i=i))
        if score >= src.min_score:
            s1, s2 = _field(src, row, "sentence1", i=i), _field(src, row, "sentence2", i=i)
            if str(s1).strip() and str(s2).strip() and str(s1).strip() != str(s2).strip():
                out.append(_example(src, task_type, s1, s2, [], score=score))
    return out


def map_classification(src: DatasetSource, rows: list[dict[str, Any]], rng: random.Random) -> list[Example]:
    """Text/label rows: query = a text, positive = another text of its label, negative = a text of another label.

    Embedding classification is nearest-neighbour-like (mteb fits a logistic regression on
    embeddings), so pulling same-label texts together is the signal that helps; the trainer
    does not use in-batch negatives for this task type (they may share the label).
    """
    task_type = src.task_type or DEFAULT_TASK_TYPE["classification"]
    by_label: dict[str, list[str]] = defaultdict(list)
    for i, row in enumerate(rows):
        text = str(_field(src, row, "text", i=i)).strip()
        if text:
            by_label[str(_field(src, row, "label", i=i))].append(text)
    labels = sorted(by_label)
    if len(labels) < 2:
        raise IngestError(f"dataset {src.name!r}: classification needs at least 2 labels, found {labels}")
    out = []
    for label in labels:
        texts = by_label[label]
        if len(texts) < 2:
            continue
        for j, text in enumerate(texts):
            positive = texts[(j + 1 + rng.randrange(len(texts) - 1)) % len(texts)]
            if positive == text:
                continue
            other = rng.choice([lab for lab in labels if lab != label])
            out.append(_example(src, task_type, text, positive, [rng.choice(by_label[other])], label=label))
    return out


def map_examples(src: DatasetSource, rows: list[dict[str, Any]], rng: random.Random) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(Example.model_validate({**row, "source": row.get("source") or src.name}))
        except Exception as e:
            raise IngestError(f"dataset {src.name!r}, row {i}: not a kalm example: {e}") from e
    return out


MAPPERS: dict[str, Callable[[DatasetSource, list[dict[str, Any]], random.Random], list[Example]]] = {
    "pairs": map_pairs, "sts": map_sts, "classification": map_classification, "examples": map_examples,
}
