"""Reading local task files line by line, with errors that name the file, the line and the fix.

Every reader here streams: a line is decoded and parsed on its own (a file is never decoded as one
buffer), so a bad byte or row is reported at its 1-based line and byte offset, and large files
(a retrieval corpus of millions of documents) never sit in memory as Python objects:
``corpus_dataset`` writes them to a memory-mapped Arrow file, cached by the file's content.

Errors are :class:`TaskFolderError` (kalm's own type; ``kalm eval`` prints it and exits non-zero).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator, Optional

from kalm.errors import not_utf8_message
from kalm.evaluation.errors import TaskFolderError

# Rows per Arrow record batch when a corpus is converted (bounds memory while converting).
ARROW_BATCH_ROWS = 10_000


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line of a UTF-8 file (1-based line numbers).

    Raises:
        TaskFolderError: the file is missing, or a line is not UTF-8 (names line, byte offset, byte, fix).
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise TaskFolderError(f"{path}: no such file") from None
    offset = 0
    with f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TaskFolderError(not_utf8_message(path, n, e.start + 1, offset + e.start,
                                                       raw[e.start:e.end], e.reason)) from None
            offset += len(raw)
            if n == 1 and text.startswith("\ufeff"):
                text = text[1:]  # a UTF-8 byte order mark is still UTF-8
            if text.strip():
                yield n, text


def iter_jsonl(path: Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of a JSONL file; a bad line or a missing field names the file, line and field."""
    for n, line in iter_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskFolderError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove the line") from None
        if not isinstance(row, dict):
            raise TaskFolderError(f"{path}:{n}: a row must be a JSON object, found {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise TaskFolderError(f"{path}:{n}: missing field(s) {missing}; every row needs {list(required)}")
        yield n, row


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """All rows of a (small) JSONL file; at least one is required."""
    rows = [row for _, row in iter_jsonl(path, required)]
    if not rows:
        raise TaskFolderError(f"{path}: no rows; a task file needs at least one JSON line")
    return rows


def first_row(path: Path) -> tuple[int, dict[str, Any]]:
    """The first row of a JSONL file (reads nothing after it)."""
    for n, row in iter_jsonl(path):
        return n, row
    raise TaskFolderError(f"{path}: no rows; a task file needs at least one JSON line")


# ---------------------------------------------------------------- field checks
def text_field(path: Path, n: int, row: dict[str, Any], key: str) -> str:
    """A text field: a non-blank string (numbers are taken as their text)."""
    v = row.get(key)
    if isinstance(v, bool) or v is None or not isinstance(v, (str, int, float)):
        raise TaskFolderError(f"{path}:{n}: field {key!r} is {_show(v)}; give a text (a JSON string)")
    v = str(v)
    if not v.strip():
        raise TaskFolderError(f"{path}:{n}: field {key!r} is blank; give a text or remove the row")
    return v


def number_field(path: Path, n: int, row: dict[str, Any], key: str) -> float:
    """A score: a JSON number (not blank, not a string, not NaN)."""
    v = row.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        blank = v is None or (isinstance(v, str) and not v.strip())
        raise TaskFolderError(f"{path}:{n}: field {key!r} is {'blank' if blank else _show(v)}; "
                              f"give a number (e.g. {key}: 3.5) or remove the row")
    if math.isnan(v) or math.isinf(v):
        raise TaskFolderError(f"{path}:{n}: field {key!r} is {v}; give a finite number")
    return float(v)


class LabelTypes:
    """Checks that every label of a file has one JSON type (all strings or all integers).

    ``1`` and ``"1"`` would otherwise become two different classes.
    """

    def __init__(self, path: Path, key: str = "label"):
        self.path, self.key = path, key
        self.kind: Optional[str] = None
        self.first_line = 0

    def check(self, n: int, value: Any) -> Any:
        if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)) or \
                (isinstance(value, str) and not value.strip()):
            raise TaskFolderError(f"{self.path}:{n}: {self.key} is {'blank' if value in (None, '') else _show(value)};"
                                  " give a label (a string, or an integer for every row)")
        kind = "string" if isinstance(value, str) else "number"
        if self.kind is None:
            self.kind, self.first_line = kind, n
        elif kind != self.kind:
            raise TaskFolderError(
                f"{self.path}:{n}: {self.key} {value!r} is a {kind} but line {self.first_line}'s is a {self.kind}; "
                f"mixed label types make {value!r} and its {'string' if kind == 'number' else 'number'} twin two "
                f"different classes: write every {self.key} the same way (all strings, e.g. \"{value}\")")
        return value


def _show(v: Any) -> str:
    if v is None:
        return "null"
    text = json.dumps(v, ensure_ascii=False)
    return f"{type(v).__name__} {text[:40]}"


# ---------------------------------------------------------------- retrieval
def corpus_dataset(path: Path, cache_dir: Path, id_key: str = "_id", with_title: bool = True):
    """A memory-mapped ``datasets.Dataset`` (columns ``id``, ``text`` [, ``title``]) of a JSONL corpus
    or query file, converted once per file content into ``cache_dir`` (record batches of
    ``ARROW_BATCH_ROWS`` rows, written atomically). Duplicate ids are an error naming both lines.

    Returns:
        (dataset, ids): ``ids`` the set of ids, for checking qrels against.
    """
    import pyarrow as pa
    from datasets import Dataset

    from kalm.store import atomic_path, hash_file

    path = Path(path)
    out = Path(cache_dir) / f"{path.stem}-{hash_file(path)[:24]}.arrow"
    cols = ["id", "title", "text"] if with_title else ["id", "text"]
    if not out.exists():
        schema = pa.schema([(c, pa.string()) for c in cols])
        seen: dict[str, int] = {}
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                batch: dict[str, list[str]] = {c: [] for c in cols}
                for n, row in iter_jsonl(path, (id_key, "text")):
                    rid = text_field(path, n, row, id_key)
                    if rid in seen:
                        raise TaskFolderError(f"{path}:{n}: {id_key} {rid!r} was already used on line {seen[rid]}; "
                                              "ids must be unique")
                    seen[rid] = n
                    batch["id"].append(rid)
                    batch["text"].append(_text_or_empty(path, n, row, "text"))
                    if with_title:
                        batch["title"].append(_text_or_empty(path, n, row, "title"))
                    if len(batch["id"]) >= ARROW_BATCH_ROWS:
                        writer.write_batch(pa.record_batch([batch[c] for c in cols], schema=schema))
                        batch = {c: [] for c in cols}
                if batch["id"]:
                    writer.write_batch(pa.record_batch([batch[c] for c in cols], schema=schema))
            if not seen:
                raise TaskFolderError(f"{path}: no rows; give at least one JSON line with {id_key!r} and 'text'")
            del seen
    ds = Dataset.from_file(str(out), in_memory=False)
    return ds, set(ds["id"])


def _text_or_empty(path: Path, n: int, row: dict[str, Any], key: str) -> str:
    v = row.get(key)
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise TaskFolderError(f"{path}:{n}: field {key!r} is {_show(v)}; give a text (a JSON string)")
    return str(v)


def read_qrels(path: Path, query_ids: set[str], doc_ids: set[str], queries_file: Path,
               corpus_file: Path) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Relevance judgements of a BEIR ``qrels/<split>.tsv`` (header ``query-id<TAB>corpus-id<TAB>score``).

    A score <= 0 makes nothing relevant (judged, not relevant: BEIR files keep such rows), so it is
    not kept; a query left with no relevant document is then skipped by mteb, as for its own tasks.

    Returns:
        (qrels, counts): ``qrels`` {query id: {doc id: score > 0}}; ``counts`` rows read, rows
        with score <= 0, and queries judged only with score <= 0 (``zero_only_queries``).

    Raises:
        TaskFolderError: a missing header, a row without 3 fields, a blank or non-integer score, or a
            query-id/corpus-id that is not in queries.jsonl/corpus.jsonl (names file, line, id, fix).
    """
    qrels: dict[str, dict[str, int]] = {}
    judged: set[str] = set()
    rows = zero = 0
    header_seen = False
    for n, line in iter_lines(path):
        parts = line.rstrip("\r\n").split("\t")
        if not header_seen:
            if parts[:3] != ["query-id", "corpus-id", "score"]:
                raise TaskFolderError(f"{path}:{n}: first line must be the header "
                                      "'query-id<TAB>corpus-id<TAB>score'")
            header_seen = True
            continue
        if len(parts) < 3:
            raise TaskFolderError(f"{path}:{n}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                                  f"got {len(parts)}")
        q, d, s = parts[0].strip(), parts[1].strip(), parts[2].strip()
        if not s:
            raise TaskFolderError(f"{path}:{n}: score is blank; give an integer relevance (0 = not relevant, "
                                  "1 or more = relevant)")
        try:
            score = float(s)
        except ValueError:
            score = math.nan
        if math.isnan(score) or score != int(score):
            raise TaskFolderError(f"{path}:{n}: score {s!r} is not an integer; give an integer relevance "
                                  "(0 = not relevant, 1 or more = relevant)")
        if q not in query_ids:
            raise TaskFolderError(f"{path}:{n}: query-id {q!r} is not an _id in {queries_file}; add the query "
                                  "or remove the row")
        if d not in doc_ids:
            raise TaskFolderError(f"{path}:{n}: corpus-id {d!r} is not an _id in {corpus_file}; add the document "
                                  "or remove the row")
        rows += 1
        judged.add(q)
        if score <= 0:
            zero += 1
            continue
        qrels.setdefault(q, {})[d] = int(score)
    if not header_seen:
        raise TaskFolderError(f"{path}: empty; first line must be the header 'query-id<TAB>corpus-id<TAB>score'")
    return qrels, {"qrels_rows": rows, "not_relevant_rows": zero, "zero_only_queries": len(judged - set(qrels)),
                   "unjudged_queries": len(query_ids - judged)}
