"""The example schema: one Parquet layout every stage reads and writes."""

import pyarrow as pa
import pytest

from kalm.schema import COLUMNS, Example, iter_examples, load_dataset, read_examples, write_examples


def _ex(**kw):
    base = dict(task_type="retrieval", query="what is faiss", positive="a similarity search library",
                negatives=["a kind of cake"], source="unit")
    return Example(**{**base, **kw})


def test_roundtrip_through_parquet_and_datasets(tmp_path):
    path = write_examples([_ex(metadata={"k": [1, 2]}), _ex(query="other", persona="a chef")], tmp_path / "x.parquet")
    table = read_examples(path)
    assert tuple(table.column_names) == COLUMNS
    rows = list(iter_examples(table))
    assert rows[0].metadata == {"k": [1, 2]} and rows[1].persona == "a chef"
    ds = load_dataset([path])
    assert ds.num_rows == 2 and ds[0]["negatives"] == ["a kind of cake"]


def test_ids_are_content_derived():
    assert _ex().id == _ex().id
    assert _ex().id != _ex(query="another").id


def test_blank_fields_and_bad_task_type_are_rejected():
    with pytest.raises(ValueError, match="query"):
        _ex(query="   ")
    with pytest.raises(ValueError, match="task_type"):
        _ex(task_type="translation")


def test_foreign_table_missing_columns_is_named(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"query": ["q"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: missing columns \['id', 'task_type'"):
        read_examples(tmp_path / "bad.parquet")


def test_shard_writer_bounds_shards_and_streams_back(tmp_path):
    import pyarrow.parquet as pq

    from kalm.schema import ShardWriter, count_rows, read_batches, shard_files

    rows = [Example(task_type="retrieval", query=f"q{i}", positive=f"p{i}", source="s") for i in range(25)]
    with ShardWriter(tmp_path / "kept.parquet", rows_per_shard=10) as w:
        w.write(rows[:7])
        w.write(rows[7:])
    assert [p.name for p in w.files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.ParquetFile(p).metadata.num_rows for p in w.files] == [10, 10, 5]
    assert count_rows(tmp_path / "kept.parquet") == 25
    streamed = [q for b in read_batches([tmp_path / "kept.parquet"], batch_size=4) for q in b.column("query").to_pylist()]
    assert streamed == [f"q{i}" for i in range(25)] == pq.read_table(tmp_path / "kept.parquet").column("query").to_pylist()
    with ShardWriter(tmp_path / "empty.parquet") as w:
        pass
    assert count_rows(w.files) == 0 and pq.read_table(w.files[0]).schema.names == list(COLUMNS)
    with pytest.raises(FileNotFoundError, match="no such Parquet file or shard folder"):
        shard_files([tmp_path / "missing.parquet"])


def test_a_shard_deleted_from_its_folder_is_named_not_skipped(tmp_path):
    """A shard folder lists its shards (``.parts.json``, hidden from pyarrow's and `datasets`' reads): a shard
    deleted later is an error naming it, not a dataset silently one shard shorter."""
    import json

    import pyarrow.parquet as pq

    from kalm.schema import PARTS_FILE, ShardWriter, missing_shards, shard_files

    folder = tmp_path / "kept.parquet"
    with ShardWriter(folder, rows_per_shard=2) as w:
        w.write([Example(task_type="retrieval", query=f"q{i}", positive=f"p{i}", source="s") for i in range(5)])
    assert json.loads((folder / PARTS_FILE).read_text()) == {"rows": 5, "parts": [
        {"name": "part-00000.parquet", "rows": 2}, {"name": "part-00001.parquet", "rows": 2},
        {"name": "part-00002.parquet", "rows": 1}]}
    assert pq.read_table(folder).num_rows == 5 and missing_shards(folder) == []
    import datasets

    assert datasets.load_dataset("parquet", data_dir=str(folder), split="train").num_rows == 5
    (folder / "part-00002.parquet").unlink()  # the last one: no gap in the numbering shows it
    assert missing_shards(folder) == [folder / "part-00002.parquet"]
    with pytest.raises(FileNotFoundError, match=r"kept\.parquet: 1 of its shards are missing \(part-00002\.parquet"):
        shard_files(folder)
    (folder / PARTS_FILE).write_text("{")  # a damaged listing is reported, not a JSON traceback
    assert missing_shards(folder) == [folder / PARTS_FILE]


def test_shard_writer_publishes_nothing_when_finishing_fails(tmp_path, monkeypatch):
    """A failure while closing (a full disk writing the listing) leaves no folder, not one without its listing."""
    from kalm import schema

    def full_disk(self, *a, **k):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        with schema.ShardWriter(tmp_path / "out.parquet", rows_per_shard=2) as w:
            w.write([Example(task_type="sts", query="a", positive="b", source="s")] * 3)
            monkeypatch.setattr(type(tmp_path), "write_text", full_disk)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_shard_writer_leaves_nothing_on_error(tmp_path):
    from kalm.schema import ShardWriter

    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path / "out.parquet", rows_per_shard=2) as w:
            w.write([Example(task_type="sts", query="a", positive="b", source="s")] * 3)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
