"""The one example schema shared by every stage, and Parquet shard I/O.

Every stage reads and writes Parquet files with exactly these columns, so the output of
any stage loads with ``datasets.load_dataset("parquet", data_files=...)`` and any stage
can take any other's output. ``metadata`` is a JSON object serialized to a string so that
free-form keys never change the Arrow schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, field_validator

from kalm.configbase import TASK_TYPES, TaskType
from kalm.store import atomic_path, hash_strings

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("task_type", pa.string(), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("positive", pa.string(), nullable=False),
        pa.field("negatives", pa.list_(pa.string()), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("persona", pa.string(), nullable=True),
        pa.field("metadata", pa.string(), nullable=False),  # JSON object
    ]
)
COLUMNS = tuple(SCHEMA.names)


class Example(BaseModel):
    """One training example (query, positive, negatives) with its task and provenance."""

    id: str = ""
    task_type: TaskType
    instruction: str = ""
    query: str = Field(..., min_length=1)
    positive: str = Field(..., min_length=1)
    negatives: list[str] = Field(default_factory=list)
    language: str = "en"
    source: str
    persona: Optional[str] = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("query", "positive")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    def model_post_init(self, __context: Any) -> None:
        if not self.id:
            # Content-derived id: the same example always gets the same id (idempotent reruns).
            object.__setattr__(self, "id", example_id(self.source, self.task_type, self.query, self.positive))

    def to_row(self) -> dict[str, Any]:
        row = self.model_dump()
        row["metadata"] = json.dumps(self.metadata, sort_keys=True, ensure_ascii=False)
        return row


def example_id(source: str, task_type: str, query: str, positive: str) -> str:
    return hash_strings([source, task_type, query, positive])[:20]


def to_table(examples: Iterable[Example | dict[str, Any]]) -> pa.Table:
    rows = []
    for ex in examples:
        if isinstance(ex, dict):
            ex = Example.model_validate({**ex, "metadata": _meta(ex.get("metadata"))})
        rows.append(ex.to_row())
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _meta(m: Any) -> dict[str, Any]:
    if m is None or m == "":
        return {}
    if isinstance(m, str):
        return json.loads(m)
    return dict(m)


def check_table(table: pa.Table, where: str = "table") -> pa.Table:
    """Cast ``table`` to the schema or fail naming the missing/extra columns and bad task types."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}; every example needs {list(COLUMNS)}")
    table = table.select(list(COLUMNS)).cast(SCHEMA)
    bad = set(table.column("task_type").to_pylist()) - set(TASK_TYPES)
    if bad:
        raise ValueError(f"{where}: unknown task_type values {sorted(bad)}; use one of {list(TASK_TYPES)}")
    return table


def write_examples(examples: Iterable[Example | dict[str, Any]] | pa.Table, path: Path) -> Path:
    """Write examples to one Parquet file atomically (temp + rename)."""
    table = examples if isinstance(examples, pa.Table) else to_table(examples)
    table = check_table(table, str(path))
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_examples(paths: Path | Iterable[Path]) -> pa.Table:
    """Read one or more Parquet shards into one table in the schema."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    tables = [check_table(pq.read_table(p), str(p)) for p in paths]
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables)


def iter_examples(table: pa.Table) -> Iterator[Example]:
    for row in table.to_pylist():
        row["metadata"] = _meta(row["metadata"])
        yield Example.model_validate(row)


def load_dataset(paths: Iterable[Path]):
    """The examples as a ``datasets.Dataset`` (memory-mapped Arrow)."""
    import datasets

    return datasets.load_dataset("parquet", data_files=[str(p) for p in paths], split="train")
