"""Local task folders of every kind as real mteb tasks, scored by mteb's own evaluators.

The folders are built in tmp_path from real sentences of ../shared/data: retrieval corpus and
reranking candidates from STS-B pairs (high-score pairs are the relevant ones), clustering from
banking77 texts and intents, pair classification from STS-B scores.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kalm.evaluation.tasks import TaskFolderError, folder_kind, load_local_task


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@pytest.fixture(scope="module")
def folders(shared_data: Path, tmp_path_factory) -> dict[str, Path]:
    """One small folder per task kind, from real shared data."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("tasks")
    sts = _read(shared_data / "stsb_en" / "test.jsonl")
    bank_train = _read(shared_data / "banking77" / "train.jsonl")
    bank_test = _read(shared_data / "banking77" / "test.jsonl")
    out = {}

    # STS under a name mteb does not know -> mteb's AbsTaskSTS with kalm metadata.
    out["sts"] = root / "my_sts"
    _write(out["sts"] / "test.jsonl", sts[:120])

    # Pair classification: near-paraphrases (score >= 4) vs unrelated pairs (score <= 1).
    pos = [r for r in sts if r["score"] >= 4.0][:40]
    neg = [r for r in sts if r["score"] <= 1.0][:40]
    out["pair"] = root / "my_pairs"
    _write(out["pair"] / "test.jsonl", [{"sentence1": r["sentence1"], "sentence2": r["sentence2"],
                                         "label": int(r["score"] >= 4.0)} for r in pos + neg])

    # Reranking: a paraphrase among 6 candidates drawn from other pairs.
    others = [r["sentence2"] for r in sts[200:600]]
    out["rerank"] = root / "my_rerank"
    _write(out["rerank"] / "test.jsonl", [{"query": r["sentence1"], "positive": [r["sentence2"]],
                                           "negative": rng.sample(others, 6)} for r in pos[:25]])

    # Retrieval (BEIR layout): corpus = second sentences of 150 pairs, queries = first sentences of
    # the high-score pairs among them, relevant = its own pair's second sentence.
    pairs = sts[:150]
    corpus = [{"_id": f"d{i}", "title": "", "text": r["sentence2"]} for i, r in enumerate(pairs)]
    rel = [(i, r) for i, r in enumerate(pairs) if r["score"] >= 3.8]
    out["retrieval"] = root / "my_retrieval"
    _write(out["retrieval"] / "corpus.jsonl", corpus)
    _write(out["retrieval"] / "queries.jsonl", [{"_id": f"q{i}", "text": r["sentence1"]} for i, r in rel])
    (out["retrieval"] / "qrels").mkdir()
    (out["retrieval"] / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i, _ in rel))

    # Clustering: two problems, each 12 banking77 texts of each of 4 intents.
    by_label: dict[str, list[str]] = {}
    for r in bank_test:
        by_label.setdefault(r["label"], []).append(r["text"])
    labels = sorted(by_label)
    problems = []
    for chosen in (labels[:4], labels[10:14]):
        items = [(t, lab) for lab in chosen for t in by_label[lab][:12]]
        rng.shuffle(items)
        problems.append({"sentences": [t for t, _ in items], "labels": [lab for _, lab in items]})
    out["clustering"] = root / "my_clusters"
    _write(out["clustering"] / "test.jsonl", problems)

    # Classification under an unknown name: 6 intents, 16 train / 8 test texts each.
    chosen = labels[20:26]
    out["classification"] = root / "my_intents"
    _write(out["classification"] / "train.jsonl", [r for lab in chosen for r in
                                                   [x for x in bank_train if x["label"] == lab][:16]])
    _write(out["classification"] / "test.jsonl", [r for lab in chosen for r in
                                                  [x for x in bank_test if x["label"] == lab][:8]])

    # Known mteb tasks from a reduced copy: the registered classes load the folder.
    out["banking77"] = root / "banking77"
    _write(out["banking77"] / "train.jsonl", [r for lab in labels for r in
                                              [x for x in bank_train if x["label"] == lab][:8]])
    _write(out["banking77"] / "test.jsonl", bank_test[::20])
    multi = _read(shared_data / "stsb_multi_mt" / "test.jsonl")
    out["stsb_multi_mt"] = root / "stsb_multi_mt"
    _write(out["stsb_multi_mt"] / "test.jsonl", [r for r in multi if r["lang"] in ("es", "zh")][::25])
    return out


def test_folder_kinds(folders, shared_data):
    assert folder_kind(shared_data / "stsb_en") == "sts"
    assert folder_kind(shared_data / "stsb_multi_mt") == "sts"
    assert folder_kind(shared_data / "banking77") == "classification"
    expected = {"sts": "sts", "pair": "pair_classification", "rerank": "reranking", "retrieval": "retrieval",
                "clustering": "clustering", "classification": "classification"}
    for key, kind in expected.items():
        assert folder_kind(folders[key]) == kind


def test_bad_folders_name_the_file_and_fix(tmp_path):
    (tmp_path / "odd").mkdir()
    _write(tmp_path / "odd" / "test.jsonl", [{"foo": 1}])
    with pytest.raises(TaskFolderError, match=r"test.jsonl: fields \['foo'\] match no task kind"):
        folder_kind(tmp_path / "odd")
    _write(tmp_path / "cls" / "test.jsonl", [{"text": "a", "label": "x"}])
    with pytest.raises(TaskFolderError, match="needs train.jsonl"):
        folder_kind(tmp_path / "cls")
    _write(tmp_path / "ret" / "corpus.jsonl", [{"_id": "1", "text": "a"}])
    with pytest.raises(TaskFolderError, match="no queries.jsonl"):
        folder_kind(tmp_path / "ret")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskFolderError, match="no test.jsonl"):
        folder_kind(tmp_path / "empty")
    _write(tmp_path / "sts" / "test.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 1}, {"sentence1": "c"}])
    task = load_local_task(tmp_path / "sts")
    with pytest.raises(TaskFolderError, match=r"test.jsonl:2: missing field\(s\) \['sentence2', 'score'\]"):
        task.load_data()


def test_wrong_mteb_name_for_folder_kind(folders):
    with pytest.raises(TaskFolderError, match="holds a sts task but mteb's Banking77Classification is Classification"):
        load_local_task(folders["sts"], "Banking77Classification")


def test_known_tasks_keep_mteb_metadata(folders):
    task = load_local_task(folders["banking77"])
    assert task.metadata.name == "Banking77Classification" and task.metadata.main_score == "accuracy"
    assert task.metadata.dataset["revision"].startswith("local-")
    assert task.metadata.prompt  # mteb's own instruction for the task is kept
    multi = load_local_task(folders["stsb_multi_mt"])
    assert multi.metadata.name == "STSBenchmarkMultilingualSTS"
    assert sorted(multi.hf_subsets) == ["es", "zh"]  # only the languages present locally


@pytest.mark.slow
def test_every_kind_runs_through_mteb_evaluators(folders, minilm_ref, tmp_path):
    """All-MiniLM-L6-v2 on one small folder of each kind: mteb's scores, result files, sane values."""
    from kalm.evaluation.config import EvalTask
    from kalm.evaluation.run import evaluate_model

    tasks = [EvalTask(name=n, local=str(folders[k])) for k, n in [
        ("sts", "my_sts"), ("pair", "my_pairs"), ("rerank", "my_rerank"), ("retrieval", "my_retrieval"),
        ("clustering", "my_clusters"), ("classification", "my_intents"),
        ("banking77", "Banking77Classification"), ("stsb_multi_mt", "STSBenchmarkMultilingualSTS")]]
    s = evaluate_model(minilm_ref, tasks, tmp_path / "out", cache_dir=tmp_path / "cache", batch_size=32)
    print(json.dumps(s["tasks"], indent=1), s["seconds"])
    assert s["types"] == {"my_sts": "STS", "my_pairs": "PairClassification", "my_rerank": "Reranking",
                          "my_retrieval": "Retrieval", "my_clusters": "Clustering", "my_intents": "Classification",
                          "Banking77Classification": "Classification", "STSBenchmarkMultilingualSTS": "STS"}
    sc = s["tasks"]
    assert 0.75 < sc["my_sts"] < 0.99          # cosine Spearman on 120 STS-B pairs
    assert sc["my_pairs"] > 0.9                # max AP: paraphrases vs unrelated pairs
    assert sc["my_rerank"] > 0.8               # MAP@1000 with 1 positive among 7
    assert sc["my_retrieval"] > 0.7            # nDCG@10 over 150 documents
    assert 0.3 < sc["my_clusters"] <= 1.0      # v-measure of 4 intents
    assert sc["my_intents"] > 0.6              # accuracy, 6 intents
    assert 0.3 < sc["Banking77Classification"] < 0.95
    assert set(s["subsets"]["STSBenchmarkMultilingualSTS"]) == {"es", "zh"}
    assert abs(sc["STSBenchmarkMultilingualSTS"] - sum(s["subsets"]["STSBenchmarkMultilingualSTS"].values()) / 2) < 1e-9
    assert abs(s["average"] - sum(sc.values()) / len(sc)) < 1e-9
    # mteb's own result files, one per task, whose main score is what we report
    files = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out" / "mteb" / "results").rglob("*.json")
             if p.name != "model_meta.json"}
    assert set(files) == set(sc)
    for name, res in files.items():
        main = [row["main_score"] for rows in res["scores"].values() for row in rows]
        assert abs(sum(main) / len(main) - sc[name]) < 1e-5  # mteb files keep 6 decimals
        assert res["dataset_revision"].startswith("local-")
