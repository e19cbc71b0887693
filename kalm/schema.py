"""The one example schema shared by every stage, and Parquet shard I/O.

Every stage reads and writes Parquet files with exactly these columns, so the output of
any stage loads with ``datasets.load_dataset("parquet", data_files=...)`` and any stage
can take any other's output. ``metadata`` is a JSON object serialized to a string so that
free-form keys never change the Arrow schema.

Large outputs are *sharded*: a folder named like a file (``kept.parquet/``, as Spark and
pyarrow datasets lay them out) holding ``part-00000.parquet``, ``part-00001.parquet``, ... of
at most ``rows_per_shard`` rows each, written by :class:`ShardWriter` (the folder appears in
one rename when complete). ``pyarrow.parquet.read_table("kept.parquet")`` and
``datasets.load_dataset("parquet", data_files="kept.parquet/*.parquet")`` read it whole;
:func:`read_batches` streams it in record batches so memory never grows with the dataset.
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
    """Read Parquet files or shard folders into one table in the schema (small data only:
    large inputs are streamed with :func:`read_batches`)."""
    tables = [check_table(pq.read_table(p), str(p)) for p in shard_files(paths)]
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


# ---------------------------------------------------------------- shards
ROWS_PER_SHARD = 100_000
SHARD_GLOB = "part-*.parquet"
# The folder's own list of its shards, written with them: a shard deleted later is then an error naming it,
# not a dataset silently one shard shorter. A hidden file, so every reader of the folder skips it: pyarrow
# datasets, `datasets.load_dataset("parquet", data_dir=...)` and ``data_files="folder/*"``, and hash_path.
PARTS_FILE = ".parts.json"


def missing_shards(path: Path | str) -> list[Path]:
    """The shards a shard folder's ``.parts.json`` lists that are not there (``[]`` for a file, or a folder
    written before the list existed or by another tool); a damaged listing is reported as missing itself."""
    listing = Path(path) / PARTS_FILE
    if not listing.is_file():
        return []
    try:
        names = [part["name"] for part in json.loads(listing.read_text())["parts"]]
    except (ValueError, KeyError, TypeError):
        return [listing]
    return [Path(path) / n for n in names if not (Path(path) / n).is_file()]


def shard_files(paths: Path | str | Iterable[Path | str]) -> list[Path]:
    """Parquet files of ``paths``: a file stays itself, a shard folder gives its ``part-*.parquet`` in order.

    Raises:
        FileNotFoundError: a path that does not exist, or a shard its folder lists that is gone (named,
            with what to do).
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            gone = missing_shards(p)
            if gone:
                raise FileNotFoundError(f"{p}: {len(gone)} of its shards are missing ({', '.join(g.name for g in gone[:3])}"
                                        f"{' ...' if len(gone) > 3 else ''}; deleted?): rerun the stage that writes it")
            out += sorted(p.glob(SHARD_GLOB))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such Parquet file or shard folder (was the stage that writes it "
                                    "run, or its run folder deleted?)")
    return out


def count_rows(paths: Path | Iterable[Path]) -> int:
    """Rows in Parquet files / shard folders, from their footers (no data read)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in shard_files(paths))


def read_batches(paths: Path | Iterable[Path], batch_size: int = 65_536,
                 columns: Optional[list[str]] = None) -> Iterator[pa.RecordBatch]:
    """Stream Parquet files / shard folders as record batches of at most ``batch_size`` rows.

    Memory holds one batch (plus one Parquet row group being decoded), whatever the data size.
    """
    for p in shard_files(paths):
        yield from pq.ParquetFile(p).iter_batches(batch_size=batch_size, columns=columns)


class ShardWriter:
    """Writes example batches as a shard folder: ``<folder>/part-00000.parquet``, ... (``rows_per_shard`` each).

    The shards are written in a temporary folder beside ``folder`` that replaces it in one
    rename on success (a killed run leaves the previous folder, never a partial one); on an
    error nothing is left behind. Every batch is cast to the example schema (missing or
    mistyped columns fail, naming ``folder``). A writer that received no rows still writes one
    empty shard, so readers always find the schema.

    Example::

        with ShardWriter(out / "kept.parquet", rows_per_shard=100_000) as w:
            for batch in read_batches(inputs):
                w.write(batch)
        w.files    # [out/kept.parquet/part-00000.parquet, ...]
    """

    def __init__(self, folder: Path, rows_per_shard: int = ROWS_PER_SHARD):
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        self.folder = Path(folder)
        self.rows_per_shard = rows_per_shard
        self.rows = 0
        self.files: list[Path] = []
        self._ctx = None
        self._tmp: Optional[Path] = None
        self._writer: Optional[pq.ParquetWriter] = None
        self._in_shard = 0
        self._names: list[str] = []

    def __enter__(self) -> "ShardWriter":
        self._ctx = atomic_path(self.folder)
        self._tmp = self._ctx.__enter__()
        self._tmp.mkdir()
        return self

    def _open_shard(self) -> None:
        name = f"part-{len(self._names):05d}.parquet"
        self._names.append(name)
        self._writer = pq.ParquetWriter(self._tmp / name, SCHEMA)
        self._in_shard = 0

    def write(self, data: pa.Table | pa.RecordBatch | Iterable[Example | dict[str, Any]]) -> None:
        """Append rows (a table, a record batch, or examples/dicts) in the example schema."""
        if self._tmp is None:
            raise RuntimeError("ShardWriter.write outside its 'with' block")
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        elif not isinstance(data, pa.Table):
            data = to_table(data)
        table = check_table(data, str(self.folder))
        offset = 0
        while offset < table.num_rows:
            if self._writer is None or self._in_shard >= self.rows_per_shard:
                if self._writer is not None:
                    self._writer.close()
                self._open_shard()
            take = min(self.rows_per_shard - self._in_shard, table.num_rows - offset)
            self._writer.write_table(table.slice(offset, take))
            self._in_shard += take
            self.rows += take
            offset += take

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            try:
                if self._writer is not None:
                    self._writer.close()
            finally:
                self._ctx.__exit__(exc_type, exc, tb)  # the temporary folder is removed, nothing published
            return False
        try:
            if self._writer is None:
                self._open_shard()  # an empty dataset is still a dataset with a schema
            self._writer.close()
            parts = [{"name": n, "rows": pq.ParquetFile(self._tmp / n).metadata.num_rows} for n in self._names]
            (self._tmp / PARTS_FILE).write_text(json.dumps({"rows": self.rows, "parts": parts}))
        except BaseException as e:  # finishing failed (a full disk): publish nothing rather than a partial folder
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        self._ctx.__exit__(None, None, None)
        self.files = [self.folder / n for n in self._names]
        return False
