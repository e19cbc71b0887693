"""User cases 06 and 07 (mining part) on the cases' own files: a hard negative that is the example's
own positive, or another right answer to its query, never reaches training."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kalm.config import load_config
from kalm.filtering.scan import norm_text
from kalm.filtering.stage import run_filter
from kalm.schema import Example, write_examples


def _case(shared_data: Path, name: str) -> Path:
    return shared_data.parent / "cases" / name


def _examples(path: Path, source: str, group_of=None) -> list[Example]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Example(task_type="retrieval", instruction="Given a question, retrieve a passage that answers it.",
                    query=r["query"], positive=r["positive"], negatives=r.get("negatives", []), source=source,
                    metadata={"group": group_of(i)} if group_of else {})
            for i, r in enumerate(rows)]


@pytest.mark.parametrize("enabled", [True, False])
def test_case06_negative_equal_to_its_positive_is_removed_counted_and_replaced(shared_data, tmp_path, minilm_ref,
                                                                              enabled):
    case = _case(shared_data, "06-negative-equals-positive")
    cfg = load_config(case / "config.yaml", check_paths=False).filter.model_copy(update={"enabled": enabled})
    write_examples(_examples(case / "pairs.jsonl", "negpos"), tmp_path / "in.parquet")
    result = run_filter(cfg, [tmp_path / "in.parquet"], tmp_path / "out", tmp_path / "cache")
    kept = pq.read_table(tmp_path / "out" / "kept.parquet").to_pylist()
    assert len(kept) == 6
    for r in kept:
        assert not any(norm_text(n) == norm_text(r["positive"]) for n in r["negatives"]), r
    # Lines 1 and 5 (exact copies) and 2 (upper case, doubled space): counted in stats.json and the summary.
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["negatives_removed"] == {"negative_equals_positive": 3}
    assert stats["negatives_removed_by_source"] == {"negpos": {"negative_equals_positive": 3}}
    assert result.counts["removed_negative_equals_positive"] == 3 == result.counts["negatives_removed"]
    removed = [r for r in kept if json.loads(r["metadata"]).get("negatives_removed")]
    assert len(removed) == 3
    if enabled:  # replaced by mined ones where negatives are wanted (num_negatives: 1)
        assert all(len(r["negatives"]) == cfg.num_negatives for r in kept)
        # line 1 keeps its other given negative; lines 2 and 5 get a mined one
        assert sorted(json.loads(r["metadata"])["mined_negatives"] for r in removed) == [0, 1, 1]
    else:  # line 1 keeps its other given negative; lines 2 and 5 have none left
        assert sorted(len(r["negatives"]) for r in removed) == [0, 0, 1]


def test_case07_other_answers_to_the_same_query_are_never_mined(shared_data, tmp_path, minilm_ref):
    case = _case(shared_data, "07-duplicate-queries-in-batch")
    cfg = load_config(case / "config.yaml", check_paths=False).filter
    write_examples(_examples(case / "pairs.jsonl", "dupq"), tmp_path / "in.parquet")
    result = run_filter(cfg, [tmp_path / "in.parquet"], tmp_path / "out", tmp_path / "cache")
    rows = pq.read_table(tmp_path / "out" / "kept.parquet").to_pylist()
    assert len(rows) == 8 and result.counts["mined_negatives"] > 0
    answers: dict[str, set[str]] = {}
    for r in rows:
        answers.setdefault(r["query"], set()).add(r["positive"])
    bad = [r for r in rows if any(n in answers[r["query"]] for n in r["negatives"])]
    assert not bad, bad
    # Every example got its one negative: an answer to another query.
    assert all(len(r["negatives"]) == 1 for r in rows)


def test_examples_of_one_group_never_serve_as_each_others_negatives(shared_data, tmp_path, minilm_ref):
    """The same kind through ingest's ``group`` metadata (one multi-positive row made several examples):
    here the 4 answers of one query carry group "g0" but paraphrased query texts; a given negative
    that is another answer of the group is removed and counted too."""
    case = _case(shared_data, "07-duplicate-queries-in-batch")
    cfg = load_config(case / "config.yaml", check_paths=False).filter
    examples = _examples(case / "pairs.jsonl", "dupq", group_of=lambda i: f"g{i // 4 if i < 4 else i}")
    examples = [e.model_copy(update={"query": e.query + " " * (i % 3) + ("?" * i if i < 4 else "")})
                for i, e in enumerate(examples)]
    answers_g0 = {e.positive for e in examples[:4]}
    examples[0] = examples[0].model_copy(update={"negatives": [examples[1].positive]})
    write_examples(examples, tmp_path / "in.parquet")
    result = run_filter(cfg, [tmp_path / "in.parquet"], tmp_path / "out", tmp_path / "cache")
    rows = pq.read_table(tmp_path / "out" / "kept.parquet").to_pylist()
    for r in rows:
        if json.loads(r["metadata"]).get("group") == "g0":
            assert not set(r["negatives"]) & answers_g0, r
    assert result.counts["removed_negative_is_another_right_answer"] == 1
