"""Ingest maps real open datasets (../shared/data) into the example schema."""

import json

import pytest

from kalm.ingest.config import DatasetSource, IngestConfig
from kalm.ingest.readers import IngestError
from kalm.ingest.stage import run_ingest
from kalm.schema import iter_examples, read_examples


def test_sts_and_classification_from_shared_data(shared_data, tmp_path):
    cfg = IngestConfig(datasets=[
        DatasetSource(name="stsb", path=shared_data / "stsb_en" / "train.jsonl", format="sts", min_score=4.0,
                      in_domain=True),
        DatasetSource(name="banking77", path=shared_data / "banking77", split="train", format="classification",
                      max_rows=300, instruction="Classify the intent"),
    ])
    result = run_ingest(cfg, tmp_path)
    examples = list(iter_examples(read_examples(result.parquet_files())))
    sts = [e for e in examples if e.source == "stsb"]
    rows = [json.loads(line) for line in (shared_data / "stsb_en" / "train.jsonl").read_text().splitlines()]
    expected = {(r["sentence1"].strip(), r["sentence2"].strip()) for r in rows
                if float(r["score"]) >= 4.0 and r["sentence1"].strip() != r["sentence2"].strip()}
    assert {(e.query, e.positive) for e in sts} == expected
    cls = [e for e in examples if e.source == "banking77"]
    assert len(cls) == 300 and result.counts["examples"] == len(sts) + 300
    labels = {json.loads(line)["text"].strip(): json.loads(line)["label"]
              for line in (shared_data / "banking77" / "train.jsonl").read_text().splitlines()}
    for e in cls:
        assert labels[e.positive] == e.metadata["label"] and labels[e.negatives[0]] != e.metadata["label"]
        assert e.query != e.positive and e.instruction == "Classify the intent"


def test_rerun_is_identical(shared_data, tmp_path):
    cfg = IngestConfig(datasets=[DatasetSource(name="b", path=shared_data / "banking77" / "train.jsonl",
                                               format="classification", max_rows=50, seed=3)])
    a = run_ingest(cfg, tmp_path / "a")
    b = run_ingest(cfg, tmp_path / "b")
    assert a.hashes == b.hashes


def test_missing_column_is_named(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    cfg = IngestConfig(datasets=[DatasetSource(name="qa", path=f, format="pairs")])
    with pytest.raises(IngestError, match=r"no column 'query' for field 'query'.*fields: \{query: <column>\}"):
        run_ingest(cfg, tmp_path / "out")
    cfg = IngestConfig(datasets=[DatasetSource(name="qa", path=f, format="pairs",
                                               fields={"query": "question", "positive": "answer"})])
    assert run_ingest(cfg, tmp_path / "out2").counts["examples"] == 1
