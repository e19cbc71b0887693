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


def test_synthetic_examples_are_deduplicated_against_open_data_and_decontaminated(shared_data, tmp_path):
    """Generation's examples go through ingest after the open datasets (issue 17): a synthetic example
    that repeats an open one is the copy removed, one that carries an evaluation test text is removed,
    and the rest keep their own instruction, language, persona and metadata."""
    from kalm.ingest.stage import with_stage_examples
    from kalm.schema import write_examples
    from kalm.stage import StageResult

    f, _ = _planted(shared_data, tmp_path)
    open_rows = [json.loads(x) for x in f.read_text().splitlines()]
    test = [json.loads(x) for x in (shared_data / "stsb_en" / "test.jsonl").read_text().splitlines()]
    synth = [
        {"task_type": "retrieval", "instruction": "Find the recipe.", "query": "How long to proof rye dough?",
         "positive": "Rye dough proofs for about ninety minutes at room temperature.", "negatives": ["Rye is a grain."],
         "language": "en", "source": "synthetic", "persona": "a baker", "metadata": json.dumps({"template": "retrieval"})},
        {"task_type": "sts", "instruction": "Retrieve similar text.", "query": open_rows[0]["query"],
         "positive": open_rows[0]["positive"], "negatives": [], "language": "en", "source": "synthetic",
         "persona": "a copier", "metadata": "{}"},  # repeats an open example
        {"task_type": "sts", "instruction": "Retrieve similar text.", "query": test[5]["sentence1"],
         "positive": "A sentence nobody evaluates on.", "negatives": [], "language": "en", "source": "synthetic",
         "persona": "a leaker", "metadata": "{}"},  # an evaluation test text
        {"task_type": "retrieval", "instruction": "找到答案。", "query": "黑麦面团要发酵多久？",
         "positive": "黑麦面团在室温下发酵大约九十分钟。", "negatives": [], "language": "zh", "source": "synthetic",
         "persona": "一位面包师", "metadata": "{}"},
    ]
    generated = StageResult(stage="generate", out_dir=tmp_path / "generate",
                            outputs=[write_examples(synth, tmp_path / "generate.parquet")], counts={"accepted": 4})
    cfg = IngestConfig(datasets=[DatasetSource(name="mix", path=f, format="pairs")],
                       decontamination={"tasks": [{"name": "STSBenchmark", "path": shared_data / "stsb_en"}]})
    assert with_stage_examples(cfg, [StageResult(stage="generate", out_dir=tmp_path, info={"disabled": True})]) is cfg
    r = run_ingest(with_stage_examples(cfg, [generated]), tmp_path / "out")
    s = r.info["per_source"]["synthetic"]
    assert s["format"] == "examples" and s["rows_read"] == 4 and s["examples"] == 2
    assert sum(s["deduplicated"].values()) == 1 and s["decontaminated"] == {"STSBenchmark": 1}
    kept = [x for x in read_examples(r.parquet_files()).to_pylist() if x["source"] == "synthetic"]
    assert {(x["persona"], x["language"], x["instruction"]) for x in kept} == {
        ("a baker", "en", "Find the recipe."), ("一位面包师", "zh", "找到答案。")}
    assert json.loads(next(x for x in kept if x["persona"] == "a baker")["metadata"])["template"] == "retrieval"
    assert r.info["per_source"]["mix"]["examples"] == 60  # the open copy is the one kept
    # A generation that kept nothing (an empty examples file) is a row of 0, not a failure.
    from kalm.schema import SCHEMA

    empty = tmp_path / "empty.parquet"
    import pyarrow.parquet as pq

    pq.write_table(SCHEMA.empty_table(), empty)
    nothing = StageResult(stage="generate", out_dir=tmp_path, outputs=[empty], counts={"accepted": 0})
    r0 = run_ingest(with_stage_examples(cfg, [nothing]), tmp_path / "out0")
    assert r0.info["per_source"]["synthetic"]["rows_read"] == 0 == r0.info["per_source"]["synthetic"]["examples"]
    assert r0.info["per_source"]["mix"]["examples"] == 60
