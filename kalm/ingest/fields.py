"""Read a format's fields out of a batch with vectorised type checks; count what is dropped and why.

A value that cannot be a training text is never converted: a null stays a null (never the text
``"None"``), a list is never printed into a string. Such rows are dropped and counted by reason
(``query_null``, ``positive_blank``, ``positive_is_list``, ``label_not_text``, ...), with the first
few line numbers of each reason. Where a whole column is wrong in the first block of a dataset
(every value a list where one text belongs, or no column of that name), ingest stops before any
work with the dataset, file, line, field and fix.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.ingest.config import FORMAT_FIELDS, DatasetSource
from kalm.ingest.readers import Batch, IngestError

FIRST_ROWS = 5  # line numbers kept per drop reason


@dataclass
class SourceStats:
    """What happened to one dataset's rows (the stage's stats.json and report read this)."""

    name: str
    format: str = ""
    format_reason: str = ""
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    examples: int = 0
    dropped: Counter = field(default_factory=Counter)  # rows that were bad data, by reason
    skipped: Counter = field(default_factory=Counter)  # rows not used by design (e.g. STS below min_score)
    negatives_removed: Counter = field(default_factory=Counter)  # single negatives removed, by reason
    first_rows: dict[str, list[str]] = field(default_factory=dict)  # reason -> first "file line N"
    decontaminated: Counter = field(default_factory=Counter)  # evaluation task -> examples removed
    deduplicated: Counter = field(default_factory=Counter)  # exact_duplicate / near_duplicate
    sampled_out: int = 0  # examples over max_rows
    planted_wrong: int = 0  # swap_positives (experiments): examples given another example's positive
    task_types: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def note_rows(self, reason: str, where: list[str]) -> None:
        have = self.first_rows.setdefault(reason, [])
        have.extend(where[:FIRST_ROWS - len(have)])

    def count(self, kind: str, reason: str, n: int, where: Optional[list[str]] = None) -> None:
        if n <= 0:
            return
        getattr(self, kind)[reason] += int(n)
        if where:
            self.note_rows(reason, where)

    def to_dict(self, in_domain: bool) -> dict[str, Any]:
        return {
            "format": self.format, "format_reason": self.format_reason, "files": self.files,
            "rows_read": self.rows_read, "examples": self.examples, "in_domain": in_domain,
            "dropped": dict(sorted(self.dropped.items())), "dropped_total": sum(self.dropped.values()),
            "skipped": dict(sorted(self.skipped.items())),
            "negatives_removed": dict(sorted(self.negatives_removed.items())),
            "first_rows": self.first_rows,
            "decontaminated": dict(sorted(self.decontaminated.items())),
            "decontaminated_total": sum(self.decontaminated.values()),
            "deduplicated": dict(sorted(self.deduplicated.items())),
            "deduplicated_total": sum(self.deduplicated.values()),
            "sampled_out": self.sampled_out, "planted_wrong": self.planted_wrong, "task_types": dict(sorted(self.task_types.items())),
            "notes": self.notes,
        }


def column_for(src: DatasetSource, fmt: str, fld: str, columns: list[str]) -> Optional[str]:
    """The dataset column read for ``fld``: ``src.fields[fld]``, else the format's first default present."""
    if fld in src.fields:
        return src.fields[fld]
    for c in FORMAT_FIELDS.get(fmt, {}).get(fld, (fld,)):
        if c in columns:
            return c
    return None


def _is_text_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t) or (
        pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)))


def _is_list_type(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _kind_of_type(t: pa.DataType) -> str:
    if _is_list_type(t):
        return "list"
    if pa.types.is_struct(t) or pa.types.is_map(t):
        return "object"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    return str(t)


class RowCheck:
    """The fields of one batch, checked; ``reason[i]`` is why row ``i`` is dropped ('' = kept).

    ``strict``: the first block of a dataset, where a wholly wrong column stops the run instead of
    dropping every row.
    """

    def __init__(self, batch: Batch, src: DatasetSource, fmt: str, stats: SourceStats, strict: bool,
                 fixes: Optional[dict[str, str]] = None):
        self.batch, self.src, self.fmt, self.stats, self.strict = batch, src, fmt, stats, strict
        self.fixes = fixes or {}
        self.n = batch.table.num_rows
        self.reason = np.full(self.n, "", dtype=object)

    # -------------------------------------------------------------- errors
    def fail(self, fld: str, column: Optional[str], row: int, problem: str, fix: str = "") -> IngestError:
        col = f" (column {column!r})" if column and column != fld else ""
        fix = fix or self.fixes.get(fld, "") or (
            f"give one text per row in {column!r}, or map another column with fields: {{{fld}: <column>}}")
        return IngestError(f"dataset {self.src.name!r}: {self.batch.where(row)}: field {fld!r}{col} {problem}, "
                           f"format {self.fmt!r}. Fix: {fix}")

    def column(self, fld: str, required: bool = True) -> Optional[str]:
        cols = self.batch.table.column_names
        col = column_for(self.src, self.fmt, fld, cols)
        if col is None or col not in cols:
            if required and self.strict:
                defaults = FORMAT_FIELDS.get(self.fmt, {}).get(fld, (fld,))
                want = self.src.fields.get(fld) or " or ".join(repr(c) for c in defaults)
                raise IngestError(
                    f"dataset {self.src.name!r}: {self.batch.file}: no column {want} for field {fld!r} of format "
                    f"{self.fmt!r}; columns are {sorted(c for c in cols if c != '_empty')}. "
                    f"Fix: map it with fields: {{{fld}: <column>}}, or choose another format")
            return None
        return col

    def present(self, fld: str, required: bool = True) -> Optional[str]:
        """:meth:`column`, and where a required field has no column, every row dropped as ``<fld>_missing``."""
        col = self.column(fld, required)
        if col is None and required:
            self.drop(f"{fld}_missing", np.ones(self.n, bool))
        return col

    def drop(self, reason: str, mask: np.ndarray) -> None:
        self.reason[(self.reason == "") & np.asarray(mask, dtype=bool)] = reason

    def _bad_rows(self, col: str) -> np.ndarray:
        bad = self.batch.bad.get(col)
        return bad if bad is not None else np.full(self.n, "", dtype=object)

    # -------------------------------------------------------------- one text
    def text(self, fld: str, required: bool = True) -> pa.Array:
        """Column of ``fld`` as trimmed strings; rows without a usable text are marked dropped
        (``required``) or left null (optional fields)."""
        col = self.present(fld, required)
        if col is None:
            return pa.nulls(self.n, pa.string())
        arr = self.batch.table.column(col).combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        bad = self._bad_rows(col)
        if not _is_text_type(arr.type):
            kind = _kind_of_type(arr.type)
            valid = np.asarray(arr.is_valid())
            if self.strict and valid.any():
                raise self.fail(fld, col, int(np.argmax(valid)), f"holds a {kind}, not one text")
            if required:
                self.drop(f"{fld}_is_list" if kind == "list" else f"{fld}_not_text", valid)
            return pa.nulls(self.n, pa.string())
        arr = arr.cast(pa.string())
        odd = bad != ""
        if odd.any():
            valid = np.asarray(arr.is_valid())
            if self.strict and not valid.any():
                i = int(np.argmax(odd))
                raise self.fail(fld, col, i, f"holds a {bad[i]}, not one text")
            for kind in sorted(set(bad[odd])):
                self.drop(f"{fld}_is_list" if kind == "list" else f"{fld}_not_text", bad == kind)
        arr = pc.utf8_trim_whitespace(arr)
        if required:
            is_null = np.asarray(arr.is_null()) & (bad == "")
            if self.strict and is_null.all() and self.n:
                raise self.fail(fld, col, 0, "is null in every row of the first block",
                                 f"map the column that holds the {fld} with fields: {{{fld}: <column>}}")
            self.drop(f"{fld}_null", is_null)
            self.drop(f"{fld}_blank", np.asarray(pc.fill_null(pc.equal(pc.utf8_length(arr), 0), False)))
        return arr

    # -------------------------------------------------------------- a list of texts
    def texts(self, fld: str, required: bool = False) -> pa.ListArray:
        """Column of ``fld`` as lists of trimmed texts (a single text is a list of one; null -> []).

        Null or blank items are removed and counted (``negatives_removed[<field>_blank_item]``).
        ``required``: rows whose list ends up empty are dropped (``<field>_empty``).
        """
        col = self.present(fld, required)
        if col is None:
            return _empty_lists(self.n)
        arr = self.batch.table.column(col).combine_chunks()
        bad = self._bad_rows(col)
        if _is_text_type(arr.type):
            arr = arr.cast(pa.string())
            offsets = np.concatenate([[0], np.cumsum(np.asarray(arr.is_valid()).astype(np.int32))]).astype(np.int32)
            arr = pa.ListArray.from_arrays(pa.array(offsets), arr.drop_null())
        elif not _is_list_type(arr.type) or not _is_text_type(arr.type.value_type):
            kind = "list of " + _kind_of_type(arr.type.value_type) if _is_list_type(arr.type) else _kind_of_type(arr.type)
            valid = np.asarray(arr.is_valid())
            if self.strict and valid.any():
                raise self.fail(fld, col, int(np.argmax(valid)), f"holds a {kind}, not a list of texts",
                                 f"give a list of strings in {col!r}, or map another column with "
                                 f"fields: {{{fld}: <column>}}")
            self.drop(f"{fld}_not_text", valid)
            return _empty_lists(self.n)
        odd = bad != ""
        if odd.any():
            for kind in sorted(set(bad[odd])):
                self.drop(f"{fld}_not_text", bad == kind)
        lists, removed = clean_lists(arr)
        self.stats.count("negatives_removed", f"{fld}_blank_item", removed)
        if required:
            self.drop(f"{fld}_empty", np.asarray(pc.list_value_length(lists)) == 0)
        return lists

    def raw(self, fld: str, required: bool = True) -> Optional[pa.Array]:
        """The column of ``fld`` as it is (labels, scores); rows where it is null are dropped when required."""
        col = self.present(fld, required)
        if col is None:
            return None
        arr = self.batch.table.column(col).combine_chunks()
        bad = self._bad_rows(col)
        if required:
            self.drop(f"{fld}_null", np.asarray(arr.is_null()) & (bad == ""))
            self.drop(f"{fld}_not_text", bad != "")
        return arr

    # -------------------------------------------------------------- result
    def keep(self) -> np.ndarray:
        """Boolean mask of rows kept; counts the others by reason with their first line numbers."""
        dropped = self.reason != ""
        if dropped.any():
            for reason in sorted(set(self.reason[dropped])):
                idx = np.flatnonzero(self.reason == reason)
                self.stats.count("dropped", reason, len(idx), [self.batch.where(i) for i in idx[:FIRST_ROWS]])
        return ~dropped


def _empty_lists(n: int) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()))


def clean_lists(arr: pa.Array) -> tuple[pa.ListArray, int]:
    """Lists of texts with items trimmed, null/blank items removed and null lists made empty.

    Returns the lists and how many items were removed.
    """
    if pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.cast(pa.list_(pa.string()))
    arr = pc.fill_null(arr, pa.scalar([], arr.type)) if arr.null_count else arr
    n = len(arr)
    values = pc.list_flatten(arr).cast(pa.string())
    parents = np.asarray(pc.list_parent_indices(arr))
    values = pc.utf8_trim_whitespace(values)
    ok = np.asarray(pc.fill_null(pc.greater(pc.utf8_length(values), 0), False))
    removed = int(len(ok) - ok.sum())
    return lists_from(values.filter(pa.array(ok)), parents[ok], n), removed


def lists_from(values: pa.Array, parents: np.ndarray, n: int) -> pa.ListArray:
    """A ListArray of ``n`` lists from flat ``values`` and their (sorted) parent row indices."""
    counts = np.bincount(parents, minlength=n) if len(parents) else np.zeros(n, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.cast(pa.string()))


def row_labels(table: pa.Table, idx) -> list[str]:
    """``"file line N"`` of rows ``idx`` of a table carrying ``_file``/``_row`` columns ([] without them)."""
    if "_row" not in table.column_names or "_file" not in table.column_names:
        return []
    files, rows = table.column("_file"), table.column("_row")
    out = []
    for i in idx:
        f = str(files[int(i)].as_py())
        unit = "line" if f.endswith((".jsonl", ".json", ".ndjson", ".tsv")) else "row"
        out.append(f"{f} {unit} {rows[int(i)].as_py()}")
    return out
