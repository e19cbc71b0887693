"""Decontamination: training examples matching evaluation test texts are removed and counted."""

import json

import pytest

from kalm.config import load_config
from kalm.ingest.config import DatasetSource, IngestConfig
from kalm.ingest.decontaminate import eval_texts
from kalm.ingest.stage import run_ingest
from kalm.schema import read_examples


def _planted(shared_data, tmp_path):
    train = [json.loads(x) for x in (shared_data / "stsb_en" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (shared_data / "stsb_en" / "test.jsonl").read_text().splitlines()]
    test_texts = {t for r in test for t in (r["sentence1"], r["sentence2"])}
    clean = [{"query": r["sentence1"], "positive": r["sentence2"]} for r in train
             if r["sentence1"] not in test_texts and r["sentence2"] not in test_texts][:60]
    long_test = next(r for r in test if len(r["sentence1"].split()) >= 18)
    planted = [
        {"query": test[0]["sentence1"], "positive": test[0]["sentence2"]},  # a test pair as it is
        # case and punctuation changed
        {"query": test[1]["sentence1"].upper().rstrip(".") + " !", "positive": "An unrelated positive text."},
        {"query": long_test["sentence1"] + " indeed", "positive": "Another unrelated positive text."},  # near-duplicate
        {"query": "A question nobody evaluates on.", "positive": test[2]["sentence2"]},  # the positive matches
    ]
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in clean[:30] + planted + clean[30:]))
    return f, planted


def test_planted_stsb_test_pairs_are_removed_and_counted(shared_data, tmp_path):
    f, planted = _planted(shared_data, tmp_path)
    tasks = [{"name": "STSBenchmark", "path": shared_data / "stsb_en"}]
    cfg = IngestConfig(datasets=[DatasetSource(name="mix", path=f, format="pairs")],
                       decontamination={"tasks": tasks}, dedup={"enabled": False})
    r = run_ingest(cfg, tmp_path / "on")
    s = r.info["per_source"]["mix"]
    assert s["decontaminated"] == {"STSBenchmark": 4} and s["examples"] == 60 and r.counts["decontaminated"] == 4
    assert s["first_rows"]["decontaminated:STSBenchmark"] == [f"{f} line {i}" for i in (31, 32, 33, 34)]
    kept = {x["query"] for x in read_examples(r.parquet_files()).to_pylist()}
    assert not kept & {p["query"] for p in planted}
    d = r.info["decontamination"]
    assert d["tasks"]["STSBenchmark"]["removed"] == 4 and d["tasks"]["STSBenchmark"]["kind"] == "sts"

    off = run_ingest(cfg.model_copy(update={"decontamination": cfg.decontamination.model_copy(update={"enabled": False})}),
                     tmp_path / "off")
    assert off.counts["examples"] == 64 and off.info["decontamination"] == {"enabled": False}


def test_run_config_checks_its_evaluation_tasks_by_default():
    cfg = load_config("cpu-demo")
    names = {t.name for t in cfg.ingest.decontamination.tasks}
    if cfg.resolved_data_dir() is None:
        pytest.skip("no local task data")
    assert {"STSBenchmark", "Banking77Classification"} <= names
    off = load_config("cpu-demo", {"ingest.decontamination.enabled": False})
    assert off.ingest.decontamination.tasks == []


@pytest.mark.parametrize("folder, kind, count", [
    ("stsb_en", "sts", None), ("banking77", "classification", 3080), ("lcqmc", "sts", None),
    ("ocnli", "pair_classification", None), ("masakhanews_clustering", "clustering", 6242), ("scifact", "retrieval", None)])
def test_evaluation_texts_of_every_layout(shared_data, folder, kind, count):
    got_kind, texts = eval_texts(shared_data / folder)
    assert got_kind == kind and len(texts) > 0
    if count is not None:
        assert len(texts) == count
    if folder == "scifact":  # the 300 test queries and the 339 relevant documents' texts (some shared)
        assert 300 < len(texts) <= 639
