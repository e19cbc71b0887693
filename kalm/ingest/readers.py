"""Read a dataset's raw rows from a local file or the hub, as a list of dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kalm.ingest.config import DatasetSource


class IngestError(ValueError):
    """A dataset that cannot be read or mapped; the message names the dataset, file or field."""


def read_rows(src: DatasetSource) -> list[dict[str, Any]]:
    """Rows of ``src``: its local file when it exists, else the hub dataset."""
    if src.path is not None and Path(src.path).exists():
        return _read_local(src, Path(src.path))
    if src.hf_name is not None:
        return _read_hub(src)
    raise IngestError(f"dataset {src.name!r}: {src.path} does not exist and no hf_name is given to fall back on")


def _read_local(src: DatasetSource, path: Path) -> list[dict[str, Any]]:
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    if path.is_dir():
        candidates = [path / f"{src.split}.jsonl", path / f"{src.split}.parquet"]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise IngestError(f"dataset {src.name!r}: folder {path} has no {src.split}.jsonl or {src.split}.parquet")
        path = found[0]
    try:
        if path.suffix in (".jsonl", ".json"):
            table = pj.read_json(path)
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            raise IngestError(f"dataset {src.name!r}: {path} is neither .jsonl nor .parquet")
    except IngestError:
        raise
    except Exception as e:  # pyarrow's parse errors do not say which file
        raise IngestError(f"dataset {src.name!r}: cannot read {path}: {e}") from e
    return table.to_pylist()


def _read_hub(src: DatasetSource) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(src.hf_name, src.hf_config, split=src.split)
    except Exception as e:
        raise IngestError(
            f"dataset {src.name!r}: cannot load hub dataset {src.hf_name!r} (config {src.hf_config!r}, split "
            f"{src.split!r}): {e}. Offline? Give a local 'path' instead."
        ) from e
    return ds.to_list()
