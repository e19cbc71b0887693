"""Read a dataset's rows in Arrow batches: JSON Lines, Parquet, a ``datasets`` folder saved with
``save_to_disk`` (memory-mapped), or a hub dataset (``datasets`` streaming).

Memory holds one batch, never the dataset. Every batch carries, for each row, the 1-based line
(JSON Lines) or row number (Parquet, hub) it came from, so every message can name it.

JSON Lines is read in blocks of whole lines: each block is checked to be UTF-8 (an error names
the file, line, column and byte offset) and parsed by pyarrow's JSON reader. A block whose
values change type within a column (a list where other rows have a string) cannot be parsed
by pyarrow; such a block is parsed line by line and the odd values are set aside per row in
:attr:`Batch.bad` (the format mapper drops those rows and counts them by reason, or, where a
whole column is wrong, stops before any work).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa

from kalm.errors import DataError, not_utf8_message
from kalm.ingest.config import DatasetSource

log = logging.getLogger(__name__)

BLOCK_BYTES = 4 << 20
_BOM = b"\xef\xbb\xbf"


class IngestError(DataError):
    """A dataset that cannot be read or mapped; the message names the dataset, file, line/row, field and fix."""


@dataclass
class Batch:
    """Rows of one file: ``table``, each row's 1-based ``rows`` number there, and values set aside."""

    table: pa.Table
    rows: np.ndarray
    file: str
    unit: str = "line"  # "line" (text files) or "row" (Parquet, Arrow, hub)
    bad: dict[str, np.ndarray] = field(default_factory=dict)  # column -> per-row kind that was set aside ('' = ok)

    def where(self, i: int) -> str:
        return f"{self.file} {self.unit} {int(self.rows[i])}"


class RowSource:
    """A readable-again sequence of record batches (two-pass formats read it twice)."""

    label = "?"

    def batches(self, batch_size: int, hint: Optional[dict[str, pa.DataType]] = None) -> Iterator[Batch]:
        raise NotImplementedError

    def head(self, batch_size: int = 256) -> Optional[Batch]:
        """The first batch (None for an empty source)."""
        return next(iter(self.batches(batch_size)), None)


# ---------------------------------------------------------------- JSON Lines
class JsonlSource(RowSource):
    def __init__(self, path: Path, block_bytes: int = BLOCK_BYTES):
        self.path = Path(path)
        self.label = str(path)
        self.block_bytes = block_bytes

    def batches(self, batch_size: int = 0, hint: Optional[dict[str, pa.DataType]] = None) -> Iterator[Batch]:
        # batch_size is not used: blocks are cut by bytes (whole lines), which bounds memory the same way.
        block = self.block_bytes if batch_size == 0 or batch_size > 1024 else max(4096, batch_size * 64)
        for chunk, first_line, offset in _line_blocks(self.path, block):
            yield _parse_block(chunk, first_line, offset, self.label, hint or {})

    def head(self, batch_size: int = 256) -> Optional[Batch]:
        for chunk, first_line, offset in _line_blocks(self.path, 64 << 10):
            return _parse_block(chunk, first_line, offset, self.label, {})
        return None


def _line_blocks(path: Path, block_bytes: int) -> Iterator[tuple[bytes, int, int]]:
    """(bytes of whole lines, number of the first line, byte offset of the block in the file)."""
    line, offset, carry = 1, 0, b""
    with open(path, "rb") as f:
        head = f.read(len(_BOM))
        if head == _BOM:
            offset = len(_BOM)  # a UTF-8 byte-order mark is not part of the first row
        else:
            carry = head
        while True:
            data = f.read(block_bytes)
            buf = carry + data
            if not data:
                if buf.strip():
                    yield buf, line, offset
                return
            cut = buf.rfind(b"\n") + 1
            if cut == 0:  # a line longer than the block: keep reading
                carry = buf
                continue
            chunk, carry = buf[:cut], buf[cut:]
            yield chunk, line, offset
            line += chunk.count(b"\n")
            offset += len(chunk)


def _check_utf8(chunk: bytes, first_line: int, offset: int, label: str) -> None:
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = chunk.rfind(b"\n", 0, e.start) + 1
        line = first_line + chunk.count(b"\n", 0, e.start)
        raise IngestError(not_utf8_message(label, line, e.start - line_start + 1, offset + e.start,
                                           chunk[e.start:e.end], e.reason)) from None


def _row_lines(chunk: bytes, first_line: int) -> np.ndarray:
    """Line numbers of the non-blank lines of ``chunk`` (pyarrow skips blank lines)."""
    lines = chunk.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if all(lines_i.strip() for lines_i in lines):
        return np.arange(first_line, first_line + len(lines), dtype=np.int64)
    return np.array([first_line + i for i, b in enumerate(lines) if b.strip()], dtype=np.int64)


def _parse_block(chunk: bytes, first_line: int, offset: int, label: str, hint: dict[str, pa.DataType]) -> Batch:
    import pyarrow.json as pj

    _check_utf8(chunk, first_line, offset, label)
    rows = _row_lines(chunk, first_line)
    # Hinted columns are read with their expected type: a value of another type then fails the block
    # (and it is read line by line, below) instead of silently becoming a column of another type.
    schema = pa.schema(list(hint.items())) if hint else None
    try:
        table = pj.read_json(
            io.BytesIO(chunk),
            read_options=pj.ReadOptions(block_size=max(len(chunk) + 1, 1 << 16), use_threads=False),
            parse_options=pj.ParseOptions(explicit_schema=schema if schema else None,
                                          unexpected_field_behavior="infer", newlines_in_values=False),
        )
        if table.num_rows == len(rows):
            for col in hint:  # a hinted key that no line has is absent, not a column of nulls
                if col in table.column_names and table.column(col).null_count == table.num_rows \
                        and json.dumps(col).encode() not in chunk:
                    table = table.drop_columns([col])
            return Batch(table, rows, label, "line")
    except pa.ArrowInvalid:
        pass  # mixed types in a column, or a line that is not JSON: find out line by line
    return _parse_lines(chunk, first_line, label, hint)


_KINDS = {str: "string", bool: "bool", int: "number", float: "number", list: "list", dict: "object"}


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return _KINDS.get(type(v), type(v).__name__)


def _parse_lines(chunk: bytes, first_line: int, label: str, hint: dict[str, pa.DataType]) -> Batch:
    records, rows = [], []
    for i, raw in enumerate(chunk.decode("utf-8").split("\n")):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise IngestError(f"{label} line {first_line + i}, column {e.colno}: not valid JSON ({e.msg}). "
                              "Fix: each line must be one JSON object (JSON Lines)") from None
        if not isinstance(obj, dict):
            raise IngestError(f"{label} line {first_line + i}: holds a JSON {_kind(obj)}, not an object. "
                              "Fix: each line must be one JSON object with named fields (JSON Lines), "
                              "not a JSON array file")
        records.append(obj)
        rows.append(first_line + i)
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r))
    arrays, bad = {}, {}
    for name in names:
        values = [r.get(name) for r in records]
        kinds = [_kind(v) for v in values]
        if name in hint:
            want = "list" if pa.types.is_list(hint[name]) else "string"
        else:
            seen = [k for k in kinds if k != "null"]
            want = max(set(seen), key=seen.count) if seen else "null"
            if set(seen) == {"number", "string"}:  # e.g. labels 0 / "entailment": all as text, losslessly
                values = [json.dumps(v) if k == "number" else v for v, k in zip(values, kinds)]
                kinds = ["string" if k == "number" else k for k in kinds]
                want = "string"
        if want == "list":  # one string where a list belongs is a list of one (e.g. "neg": "text")
            values = [[v] if k == "string" else v for v, k in zip(values, kinds)]
            kinds = ["list" if k == "string" else k for k in kinds]
        keep = [v if k == want else None for v, k in zip(values, kinds)]
        odd = np.array(["" if k in (want, "null") else k for k in kinds], dtype=object)
        try:
            arr = pa.array(keep, hint.get(name) if name in hint else None)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Nested values of mixed types (e.g. a list holding numbers and strings): strings only.
            arr = pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in keep], pa.string())
        arrays[name] = arr
        if odd.any():
            bad[name] = odd
    table = pa.table(arrays) if arrays else pa.table({"_empty": pa.nulls(len(records))})
    return Batch(table, np.array(rows, dtype=np.int64), label, "line", bad)


# ---------------------------------------------------------------- Parquet, Arrow, hub
class ParquetSource(RowSource):
    def __init__(self, path: Path):
        self.path = Path(path)
        self.label = str(path)

    def batches(self, batch_size: int = 8192, hint=None) -> Iterator[Batch]:
        import pyarrow.parquet as pq

        try:
            f = pq.ParquetFile(self.path)
        except Exception as e:
            raise IngestError(f"{self.label}: not a readable Parquet file ({e}). Fix: give a .parquet file "
                              "written by pyarrow/pandas/datasets, or a .jsonl file") from None
        start = 1
        for rb in f.iter_batches(batch_size=batch_size or 8192):
            yield Batch(pa.Table.from_batches([rb]), np.arange(start, start + rb.num_rows, dtype=np.int64),
                        self.label, "row")
            start += rb.num_rows


class ArrowDatasetSource(RowSource):
    """A ``datasets`` Dataset (hub stream or a folder saved with ``save_to_disk``) read as Arrow tables."""

    def __init__(self, label: str, open_fn):
        self.label = label
        self._open = open_fn

    def batches(self, batch_size: int = 8192, hint=None) -> Iterator[Batch]:
        ds = self._open()
        start = 1
        for table in ds.with_format("arrow").iter(batch_size=batch_size or 8192):
            if isinstance(table, pa.RecordBatch):
                table = pa.Table.from_batches([table])
            yield Batch(table, np.arange(start, start + table.num_rows, dtype=np.int64), self.label, "row")
            start += table.num_rows


def hub_source(src: DatasetSource, config: Optional[str] = None, split: Optional[str] = None,
               single_split: bool = False) -> ArrowDatasetSource:
    """A hub dataset (``src.hf_name``), streamed unless ``src.streaming`` is false.

    ``single_split``: take the config's only split whatever its name (BEIR corpus/queries configs).
    """
    config = config if config is not None else src.hf_config
    split = split or src.split
    label = f"hub:{src.hf_name}" + (f"[{config}]" if config else "") + f"/{split}" + \
        (f"@{src.revision}" if src.revision else "")

    def open_fn():
        import datasets

        try:
            if single_split:
                dd = datasets.load_dataset(src.hf_name, config, revision=src.revision, streaming=src.streaming)
                names = list(dd.keys())
                return dd[split] if split in names else dd[names[0]] if len(names) == 1 else dd[split]
            return datasets.load_dataset(src.hf_name, config, split=split, revision=src.revision,
                                         streaming=src.streaming)
        except Exception as e:
            raise IngestError(
                f"dataset {src.name!r}: cannot load {label}: {type(e).__name__}: {e}. Offline (HF_HUB_OFFLINE=1, "
                "set by kalm unless KALM_ONLINE=1)? Give a local 'path', or check the name, config and split"
            ) from None

    return ArrowDatasetSource(label, open_fn)


def disk_source(path: Path, split: str) -> ArrowDatasetSource:
    def open_fn():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise IngestError(f"{path}: saved DatasetDict has splits {list(ds)}, not {split!r}. Fix: set split")
            ds = ds[split]
        return ds

    return ArrowDatasetSource(f"{path} ({split})", open_fn)


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def file_source(path: Path) -> RowSource:
    """The reader of one local file, by suffix."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return JsonlSource(path)
    if name.endswith(".parquet"):
        return ParquetSource(path)
    raise IngestError(f"{path}: unsupported file type; give a .jsonl (JSON Lines) or .parquet file, "
                      "a folder saved with datasets' save_to_disk, or a BEIR folder")


def local_split(path: Path, split: str) -> Optional[RowSource]:
    """A folder's ``<split>.jsonl`` / ``<split>.parquet`` / ``<split>/`` of Parquet parts, or a saved dataset."""
    if is_saved_dataset(path):
        return disk_source(path, split)
    for cand in (path / f"{split}.jsonl", path / f"{split}.parquet", path / f"{split}.json"):
        if cand.is_file():
            return file_source(cand)
    return None


class ChainSource(RowSource):
    """Several sources read one after the other (a folder of Parquet parts)."""

    def __init__(self, sources: list[RowSource], label: str):
        self.sources = sources
        self.label = label

    def batches(self, batch_size: int = 8192, hint=None) -> Iterator[Batch]:
        for s in self.sources:
            yield from s.batches(batch_size, hint)


# ---------------------------------------------------------------- TSV (BEIR qrels)
class TsvSource(RowSource):
    """A tab-separated file with a header line (BEIR's ``qrels/<split>.tsv``), all columns as text."""

    def __init__(self, path: Path, block_bytes: int = BLOCK_BYTES):
        self.path = Path(path)
        self.label = str(path)
        self.block_bytes = block_bytes

    def batches(self, batch_size: int = 0, hint=None) -> Iterator[Batch]:
        import pyarrow.csv as pcsv

        header = None
        for chunk, first_line, offset in _line_blocks(self.path, self.block_bytes):
            _check_utf8(chunk, first_line, offset, self.label)
            if header is None:
                cut = chunk.find(b"\n") + 1 or len(chunk)
                header, chunk, first_line = chunk[:cut], chunk[cut:], first_line + 1
                names = header.decode("utf-8").rstrip("\r\n").split("\t")
            if not chunk.strip():
                continue
            try:
                table = pcsv.read_csv(
                    io.BytesIO(header + chunk),
                    parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
                    convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names}))
            except pa.ArrowInvalid as e:
                last = first_line + chunk.count(b"\n") - 1
                raise IngestError(f"{self.label} (lines {first_line}-{last}): not a tab-separated table with the "
                                  f"header's {len(names)} columns ({e}). Fix: one row per line, fields separated "
                                  "by one tab") from None
            yield Batch(table, _row_lines(chunk, first_line), self.label, "line")
