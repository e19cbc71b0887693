"""One test per input format, on small files shaped like the real ones (and the real ../shared data)."""

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kalm.ingest.config import DatasetSource, IngestConfig
from kalm.ingest.readers import IngestError
from kalm.ingest.stage import run_ingest
from kalm.schema import iter_examples, read_examples

CASES = Path(__file__).resolve().parent.parent.parent / "shared" / "cases"
OFF = {"decontamination": {"enabled": False}, "dedup": {"enabled": False}}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _ingest(tmp_path, **src):
    src.setdefault("name", "d")
    r = run_ingest(IngestConfig(datasets=[DatasetSource(**src)], **OFF), tmp_path / "out")
    return list(iter_examples(read_examples(r.parquet_files()))), r.info["per_source"][src["name"]]


def _groups(examples):
    return Counter(e.metadata["group"] for e in examples)


@pytest.fixture
def case01() -> Path:
    p = CASES / "01-flagembedding-pos-list" / "train_fe.jsonl"
    if not p.exists():
        pytest.skip("../shared/cases is absent")
    return p


def test_flagembedding_pos_lists_become_one_example_per_positive(case01, tmp_path):
    ex, s = _ingest(tmp_path, path=case01, format="flagembedding", instruction="Answer the question")
    raw = [json.loads(line) for line in case01.read_text().splitlines()]
    assert s["rows_read"] == 6 and len(ex) == sum(len(r["pos"]) for r in raw) == 7
    assert {(e.query, e.positive) for e in ex} == {(r["query"], p) for r in raw for p in r["pos"]}
    assert not any(t.startswith("[") for e in ex for t in [e.query, e.positive, *e.negatives])  # never printed lists
    starter = [e for e in ex if e.query == "what is a sourdough starter"]
    assert len(starter) == 2 and len({e.metadata["group"] for e in starter}) == 1  # positives share a group
    assert all(e.negatives == ["Baguettes are long thin loaves."] for e in starter)
    by_q = {e.query: e for e in ex}
    assert by_q["symptoms of a failing car battery"].negatives == []  # neg: []
    assert by_q["how to store fresh herbs"].negatives == []  # no neg key
    assert all(e.instruction == "Answer the question" and e.task_type == "retrieval" for e in ex)


def test_flagembedding_prompt_type_and_positive_among_negatives(tmp_path):
    f = _jsonl(tmp_path / "fe.jsonl", [
        {"query": "q1", "pos": ["p1", "p2"], "neg": ["P2 ", "n1", "q1", "n1"], "prompt": "Find the answer.",
         "type": "normal"},
        {"query": "a sentence", "pos": ["a similar sentence"], "neg": [], "type": "symmetric_sts"},
        {"query": "text", "pos": "a same-class text", "type": "symmetric_class"}])
    ex, s = _ingest(tmp_path, path=f, format="auto", instruction="default")
    assert s["format"] == "flagembedding" and "query + pos" in s["format_reason"]
    q1 = [e for e in ex if e.query == "q1"]
    assert [e.negatives for e in q1] == [["n1"], ["n1"]]  # other positive, query, repeat removed
    assert s["negatives_removed"] == {"negative_equals_positive": 1, "negative_is_another_positive": 1,
                                      "negative_equals_query": 2, "negative_repeated": 2}
    assert q1[0].instruction == "Find the answer." and q1[0].metadata["type"] == "normal"
    assert {e.query: e.task_type for e in ex} == {"q1": "retrieval", "a sentence": "sts", "text": "classification"}
    assert next(e for e in ex if e.query == "a sentence").instruction == "default"


def test_sentence_transformers_columns_by_position(tmp_path):
    table = pa.table({"anchor": ["how do I reset a router", "best soup"], "positive": ["Hold reset 10 s.", "Lentil soup."],
                      "negative_1": ["Routers route.", None], "negative_2": ["Modems modulate.", "Soup is wet."],
                      "label": [1, 1]})
    pq.write_table(table, tmp_path / "st.parquet")
    ex, s = _ingest(tmp_path, path=tmp_path / "st.parquet", format="auto")
    assert s["format"] == "sentence_transformers"
    assert [(e.query, e.positive, e.negatives) for e in ex] == [
        ("how do I reset a router", "Hold reset 10 s.", ["Routers route.", "Modems modulate."]),
        ("best soup", "Lentil soup.", ["Soup is wet."])]
    ex, _ = _ingest(tmp_path, path=tmp_path / "st.parquet", format="sentence_transformers", name="named",
                    fields={"anchor": "positive", "positive": "anchor", "negatives": "negative_2"})
    assert (ex[0].query, ex[0].positive, ex[0].negatives) == ("Hold reset 10 s.", "how do I reset a router",
                                                              ["Modems modulate."])


def test_tevatron_passages_join_title_as_mteb(tmp_path):
    f = _jsonl(tmp_path / "tev.jsonl", [{
        "query_id": "3", "query": "what is a starter",
        "positive_passages": [{"docid": "7", "title": "Starter", "text": "A starter is flour and water."},
                              {"docid": "8", "title": "", "text": "Wild yeast culture."}],
        "negative_passages": [{"docid": "9", "title": "Bread", "text": "Baguettes are long."}]}])
    ex, s = _ingest(tmp_path, path=f, format="auto")
    assert s["format"] == "tevatron"
    assert [(e.positive, e.negatives) for e in ex] == [("Starter A starter is flour and water.",
                                                        ["Bread Baguettes are long."]),
                                                       ("Wild yeast culture.", ["Bread Baguettes are long."])]
    assert len(_groups(ex)) == 1


def test_beir_scifact_folder(shared_data, tmp_path):
    """SciFact's BEIR folder (its test qrels stand in for a train split): one example per qrels pair."""
    ex, s = _ingest(tmp_path, path=shared_data / "scifact", split="test", format="auto")
    assert s["format"] == "beir" and s["rows_read"] == 339 and len(ex) == 339
    corpus = {}
    for line in (shared_data / "scifact" / "corpus.jsonl").read_text().splitlines():
        d = json.loads(line)
        corpus[d["_id"]] = (d["title"] + " " + d["text"]).strip() if d["title"] else d["text"].strip()
    queries = {json.loads(x)["_id"]: json.loads(x)["text"]
               for x in (shared_data / "scifact" / "queries.jsonl").read_text().splitlines()}
    for e in ex:
        assert e.positive == corpus[e.metadata["corpus_id"]] and e.query == queries[e.metadata["query_id"]]
    multi = [g for g, n in _groups(ex).items() if n > 1]
    assert multi  # queries with several relevant documents share a group


def test_beir_scores_and_unknown_ids(tmp_path):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    _jsonl(d / "corpus.jsonl", [{"_id": "d1", "title": "T", "text": "doc one"},
                                {"_id": "d2", "title": "", "text": "doc two"}])
    _jsonl(d / "queries.jsonl", [{"_id": "q1", "text": "first query"}, {"_id": "q2", "text": "second query"}])
    (d / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td2\t2\nq9\td1\t1\nq2\tdx\t1\n")
    ex, s = _ingest(tmp_path, path=d, format="beir")
    assert [(e.query, e.positive) for e in ex] == [("first query", "T doc one"), ("second query", "doc two")]
    assert s["skipped"] == {"qrels_score_not_positive": 1}
    assert s["dropped"] == {"query_id_unknown": 1, "corpus_id_unknown": 1}
    assert s["first_rows"]["query_id_unknown"] == [f"{d / 'qrels' / 'train.tsv'} line 5"]


def test_nli_triplets(tmp_path):
    f = _jsonl(tmp_path / "nli.jsonl", [
        {"premise": "A man plays a guitar.", "hypothesis": "A man makes music.", "label": 0},
        {"premise": "A man plays a guitar.", "hypothesis": "Someone is outdoors.", "label": 1},
        {"premise": "A man plays a guitar.", "hypothesis": "The man is asleep.", "label": 2},
        {"premise": "Two dogs run.", "hypothesis": "Animals move.", "label": "entailment"},
        {"premise": "Two dogs run.", "hypothesis": "Dogs play.", "label": "entailment"},
        {"premise": "A cat sleeps.", "hypothesis": "A cat runs.", "label": "contradiction"},
        {"premise": "A bird sings.", "hypothesis": "Music.", "label": -1}])
    ex, s = _ingest(tmp_path, path=f, format="auto")
    assert s["format"] == "nli"
    got = {(e.query, e.positive): e.negatives for e in ex}
    assert got == {("A man plays a guitar.", "A man makes music."): ["The man is asleep."],
                   ("Two dogs run.", "Animals move."): [], ("Two dogs run.", "Dogs play."): []}
    assert s["skipped"] == {"neutral": 1, "no_entailment": 1, "no_gold_label": 1}
    assert all(e.task_type == "sts" for e in ex)


def test_pair_classification_ocnli(shared_data, tmp_path):
    rows = [json.loads(x) for x in (shared_data / "ocnli" / "test.jsonl").read_text().splitlines()]
    ex, s = _ingest(tmp_path, path=shared_data / "ocnli" / "test.jsonl", format="auto", language="zh")
    assert s["format"] == "pair_classification"
    positives = [r for r in rows if r["label"] == 1]
    assert len(ex) + s["dropped"].get("query_equals_positive", 0) == len(positives)
    assert s["skipped"]["negative_pair"] == len(rows) - len(positives)
    assert {e.task_type for e in ex} == {"pair_classification"} and ex[0].language == "zh"


def test_clustering_masakhanews_lists(shared_data, tmp_path):
    ex, s = _ingest(tmp_path, path=shared_data / "masakhanews_clustering" / "test.jsonl", format="auto",
                    max_rows=400)
    assert s["format"] == "clustering" and s["rows_read"] == 16 and len(ex) == 400
    label_of = {}
    for line in (shared_data / "masakhanews_clustering" / "test.jsonl").read_text().splitlines():
        r = json.loads(line)
        for t, lab in zip(r["sentences"], r["labels"]):
            label_of.setdefault(t.strip(), set()).add(str(lab))
    for e in ex:
        assert e.metadata["label"] in label_of[e.positive] and e.query != e.positive
        assert e.metadata["label"] not in label_of[e.negatives[0]] or len(label_of[e.negatives[0]]) > 1
    assert {e.task_type for e in ex} == {"clustering"}


def test_reranking_lists(tmp_path):
    f = _jsonl(tmp_path / "rr.jsonl", [{"query": "what is a starter", "positive": ["Flour and water.", "Yeast culture."],
                                        "negative": ["Baguettes.", "Yeast culture."]},
                                       {"query": "empty", "positive": [], "negative": ["x"]}])
    ex, s = _ingest(tmp_path, path=f, format="auto")
    assert s["format"] == "reranking"
    assert [(e.positive, e.negatives) for e in ex] == [("Flour and water.", ["Baguettes."]),
                                                       ("Yeast culture.", ["Baguettes."])]
    assert s["dropped"] == {"positive_empty": 1} and len(_groups(ex)) == 1


def test_examples_format_keeps_metadata(tmp_path):
    first, _ = _ingest(tmp_path / "a", path=_jsonl(tmp_path / "p.jsonl", [{"query": "q", "positive": "p"}]))
    ex, s = _ingest(tmp_path / "b", path=tmp_path / "a" / "out" / "d.parquet", format="auto", name="again")
    assert s["format"] == "examples" and ex[0].metadata["group"] == first[0].metadata["group"]
    assert ex[0].source == "again"


def test_auto_fails_on_unknown_layout(tmp_path):
    f = _jsonl(tmp_path / "x.jsonl", [{"title": "a", "body": "b"}])
    with pytest.raises(IngestError, match=r"dataset 'd'.*format: auto cannot tell the layout from "
                                          r"columns \['body', 'title'\]"):
        _ingest(tmp_path, path=f, format="auto")


def test_case06_given_negative_equal_to_its_positive_is_counted_in_the_stage_summary(tmp_path):
    """Case 06 through the whole recipe's first stage: ingest removes the 3 negatives that equal their
    positive (exactly or up to case and spacing); the count is in the stage's counts (the manifest's
    stage table) and in the report's ingest table, not only in ingest/stats.json."""
    from kalm.evaluation.report import ingest_table

    p = CASES / "06-negative-equals-positive" / "pairs.jsonl"
    if not p.exists():
        pytest.skip("../shared/cases is absent")
    r = run_ingest(IngestConfig(datasets=[DatasetSource(name="negpos", path=str(p), format="pairs")], **OFF),
                   tmp_path / "out")
    assert r.counts["negatives_removed"] == 3 == r.counts["removed_negative_equals_positive"]
    row = next(line for line in ingest_table(r.info) if line.startswith("| negpos |"))
    assert "| negative_equals_positive 3 |" in row
    for e in iter_examples(read_examples(r.parquet_files())):
        assert all(" ".join(n.lower().split()) != " ".join(e.positive.lower().split()) for n in e.negatives)
