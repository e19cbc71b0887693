"""Bad rows never poison the data: dropped and counted by reason with their lines, or, where a whole
column is wrong, one clear error before any work (cases 01, 03, 05 of ../shared/cases)."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kalm.config import load_config
from kalm.errors import DataError
from kalm.ingest.config import DatasetSource, IngestConfig
from kalm.ingest.readers import IngestError
from kalm.ingest.stage import run_ingest
from kalm.schema import read_examples

CASES = Path(__file__).resolve().parent.parent.parent / "shared" / "cases"


@pytest.fixture
def cases() -> Path:
    if not CASES.is_dir():
        pytest.skip("../shared/cases is absent")
    return CASES


def _rows(result):
    return read_examples(result.parquet_files()).to_pylist()


def test_case03_null_and_blank_fields_are_dropped_and_counted(cases, tmp_path):
    cfg = load_config(cases / "03-null-or-blank-query" / "config.yaml")
    r = run_ingest(cfg.ingest, tmp_path / "a")
    s = r.info["per_source"]["blankq"]
    f = str(cases / "03-null-or-blank-query" / "pairs.jsonl").replace(str(CASES), "../shared/cases")
    assert s["rows_read"] == 6 and s["examples"] == 3
    assert s["dropped"] == {"query_null": 1, "positive_blank": 1, "query_blank": 1}
    assert s["first_rows"]["query_null"] == [f"{f} line 2"]
    assert s["first_rows"]["positive_blank"] == [f"{f} line 4"]
    assert s["first_rows"]["query_blank"] == [f"{f} line 5"]
    assert r.counts["dropped"] == 3

    cfg = load_config(cases / "03-null-or-blank-query" / "config_null_query.yaml")
    r = run_ingest(cfg.ingest, tmp_path / "b")
    rows = _rows(r)
    assert len(rows) == 4 and not any(x["query"] in ("None", "null", "") for x in rows)  # never the text "None"
    assert r.info["per_source"]["nullq"]["dropped"] == {"query_null": 1}


def test_case03_too_few_kept_examples_stop_train_with_a_data_error(cases, tmp_path):
    """Case 03's recipe keeps 3 of 6 rows; its batch size is 4. The train stage says so before any
    process starts, as a DataError (never retried), naming the setting and the fix."""
    from kalm.training.stage import train

    cfg = load_config(cases / "03-null-or-blank-query" / "config.yaml")
    r = run_ingest(cfg.ingest, tmp_path / "ingest")
    with pytest.raises(DataError) as e:
        train(cfg.train, r.parquet_files(), tmp_path / "train")
    msg = str(e.value)
    assert "3 examples left after ingest and filter" in msg and "train.batch_size 4" in msg, msg
    assert "lower train.batch_size to at most 3" in msg
    assert not (tmp_path / "train" / "checkpoints").exists()  # no training started


def test_case01_list_where_one_text_belongs_fails_before_any_work(cases, tmp_path):
    cfg = load_config(cases / "01-flagembedding-pos-list" / "config.yaml")
    with pytest.raises(IngestError) as e:
        run_ingest(cfg.ingest, tmp_path / "out")
    msg = str(e.value)
    assert "dataset 'fe-train'" in msg and "train_fe.jsonl line 1" in msg
    assert "field 'positive' (column 'pos') holds a list" in msg and "format: flagembedding" in msg
    assert not list((tmp_path / "out").glob("*.parquet"))  # nothing written
    assert isinstance(e.value, DataError)  # never retried
    assert "drop a `fields:` mapping of them" in msg

    # Following the hint with the old mapping kept is refused with the fix; without it, every positive is text.
    ds = cfg.ingest.datasets[0].model_dump()
    with pytest.raises(ValueError, match=r"format 'flagembedding' has no field\(s\) \['negatives', 'positive'\].*"
                                         r"Fix: map only fields whose column has another name"):
        DatasetSource(**{**ds, "format": "flagembedding"})
    src = DatasetSource(**{**ds, "format": "flagembedding", "fields": {}})
    rows = read_examples(run_ingest(IngestConfig(datasets=[src]), tmp_path / "fe").parquet_files()).to_pylist()
    assert len(rows) == 7 and not any(r["positive"].startswith("[") for r in rows)  # row 2 has two positives


def test_case05_non_utf8_file_names_file_line_and_byte(cases, tmp_path):
    cfg = load_config(cases / "05-non-utf8-bytes" / "config.yaml")
    with pytest.raises(IngestError, match=r"dataset 'latin1': .*pairs_latin1.jsonl line 1, column 59 \(byte offset 58\): "
                                          r"byte 0xe9 is not UTF-8.*Fix: re-save it as UTF-8"):
        run_ingest(cfg.ingest, tmp_path / "out")


def test_bad_byte_far_into_a_file_is_found_at_its_line_and_nothing_is_left_behind(tmp_path):
    f = tmp_path / "big.jsonl"
    lines = [json.dumps({"query": f"question {i}", "positive": f"answer {i}"}).encode() for i in range(20_000)]
    lines[15_000] = '{"query": "caf\xe9 hours", "positive": "seven"}'.encode("latin-1")
    f.write_bytes(b"\n".join(lines) + b"\n")
    offset = sum(len(x) + 1 for x in lines[:15_000]) + len(b'{"query": "caf')
    src = DatasetSource(name="big", path=f, format="pairs")
    with pytest.raises(IngestError, match=rf"big.jsonl line 15001, column 15 \(byte offset {offset}\)"):
        run_ingest(IngestConfig(datasets=[src], dedup={"enabled": False}), tmp_path / "out")
    assert not (tmp_path / "out" / "big.parquet").exists()


def test_scattered_lists_and_numbers_are_dropped_with_their_lines(tmp_path):
    rows = [{"query": f"question {i}", "positive": f"answer {i}"} for i in range(10)]
    rows[3]["positive"] = ["a", "list"]
    rows[6]["query"] = 42
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows[:5]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[5:]) + "\n")
    r = run_ingest(IngestConfig(datasets=[DatasetSource(name="p", path=f)]), tmp_path / "out")
    s = r.info["per_source"]["p"]
    assert s["dropped"] == {"positive_is_list": 1, "query_not_text": 1} and s["examples"] == 8
    assert s["first_rows"]["positive_is_list"] == [f"{f} line 4"]
    assert s["first_rows"]["query_not_text"] == [f"{f} line 8"]  # the blank line 6 is counted
    assert not any(x["positive"].startswith("[") for x in _rows(r))


def test_whole_wrong_column_in_parquet_fails_before_any_dataset_is_written(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
    pq.write_table(pa.table({"query": [1, 2], "positive": ["a", "b"]}), tmp_path / "bad.parquet")
    cfg = IngestConfig(datasets=[DatasetSource(name="good", path=good),
                                 DatasetSource(name="bad", path=tmp_path / "bad.parquet")])
    with pytest.raises(IngestError, match=r"dataset 'bad': .*bad.parquet row 1: field 'query' holds a number, not one text"):
        run_ingest(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "good.parquet").exists()  # checked before any work


def test_negatives_equal_to_positive_or_query_are_removed_and_counted(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"query": "How do I reset a router?", "positive": "Hold the reset button.",
                             "negatives": ["hold the  RESET button.", "how do i reset a router?", " ", None,
                                           "Routers forward packets."]}) + "\n")
    r = run_ingest(IngestConfig(datasets=[DatasetSource(name="p", path=f)]), tmp_path / "out")
    assert _rows(r)[0]["negatives"] == ["Routers forward packets."]
    assert r.info["per_source"]["p"]["negatives_removed"] == {
        "negative_equals_positive": 1, "negative_equals_query": 1, "negatives_blank_item": 2}


def test_query_equal_to_positive_is_dropped(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"query": "Same text.", "positive": " same  TEXT. "}) + "\n" +
                 json.dumps({"query": "a", "positive": "b"}) + "\n")
    r = run_ingest(IngestConfig(datasets=[DatasetSource(name="p", path=f)]), tmp_path / "out")
    assert r.info["per_source"]["p"]["dropped"] == {"query_equals_positive": 1} and r.counts["examples"] == 1


@pytest.mark.parametrize("content, message", [
    ('{"query": "q", "positive": "p"}\n{"query": "q2", positive: "p"}\n',
     r"line 2, column 17: not valid JSON \(Expecting property name"),
    ('[{"query": "q", "positive": "p"}]\n', r"line 1: holds a JSON list, not an object"),
])
def test_malformed_json_lines_name_the_line(tmp_path, content, message):
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    with pytest.raises(IngestError, match=message):
        run_ingest(IngestConfig(datasets=[DatasetSource(name="p", path=f)]), tmp_path / "out")


def test_not_utf8_fix_command_quotes_the_path(tmp_path, monkeypatch):
    """The iconv command in the message runs as pasted, also for a path with spaces and quotes, and also
    from another folder when the config gave the path relative to where the run started."""
    import shlex
    import subprocess

    from kalm.errors import not_utf8_message

    path = tmp_path / "my data" / "it's latin1.jsonl"
    path.parent.mkdir()
    path.write_bytes('{"text": "café"}\n'.encode("latin-1"))
    monkeypatch.chdir(tmp_path)
    message = not_utf8_message(Path("my data") / path.name, 1, 14, 13, b"\xe9", "invalid continuation byte")
    assert message.startswith("my data/it's latin1.jsonl line 1")  # the path as the user gave it
    command = message.split("`")[1]
    assert shlex.split(command)[5] == str(path)
    (tmp_path / "elsewhere").mkdir()
    subprocess.run(["bash", "-c", command], check=True, cwd=tmp_path / "elsewhere")
    assert path.read_text(encoding="utf-8") == '{"text": "café"}\n'


def test_mixed_encodings_are_not_offered_a_whole_file_conversion(tmp_path):
    """UTF-8 lines with accents, then a Latin-1 line: iconv over the whole file would turn the good
    'café' into 'cafÃ©', so the message asks for a re-export or a fix of that line instead."""
    from kalm.errors import not_utf8_message

    path = tmp_path / "mixed.jsonl"
    good = '{"text": "café"}\n'.encode("utf-8")
    path.write_bytes(good + '{"text": "crème"}\n'.encode("latin-1"))
    message = not_utf8_message(path, 2, 13, len(good) + 12, b"\xe8", "invalid continuation byte")
    assert "mixes encodings" in message and "correct line 2" in message and "iconv" not in message
