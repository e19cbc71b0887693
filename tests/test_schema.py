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
