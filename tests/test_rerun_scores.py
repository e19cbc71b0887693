"""Scores kept or invalidated when a rerun stops before evaluate (cases 12 and 13): the trained model's
scores stand while the model is the one they were measured on, by content, and are marked stale, never
shown as the new model's, once it changed."""

from __future__ import annotations

from pathlib import Path

from flows.retrain import stored_scores, unscored_reason
from kalm.evaluation.report import _stage_rows
from kalm.stage import StageResult
from kalm.store import RunStore

SCORES = {"base": {"average": 0.61, "tasks": {"STSB": 0.61}},
          "trained": {"average": 0.82, "tasks": {"STSB": 0.82}}}


def _run(tmp_path: Path, **evaluate) -> RunStore:
    store = RunStore(tmp_path / "runs", "r")
    store.record_stage("evaluate", status="done", scores=SCORES,
                       metrics={"base/average": 0.61, "trained/average": 0.82}, **evaluate)
    return store


def _trained(tmp_path: Path, model_hash: str) -> StageResult:
    return StageResult(stage="train", out_dir=tmp_path / "runs" / "r" / "train", hashes={"model": model_hash})


def test_an_unchanged_model_keeps_its_scores(tmp_path):
    store = _run(tmp_path, scored_model_hash="h1")
    warned = []
    assert stored_scores(store, _trained(tmp_path, "h1"), True, warned.append) == SCORES
    assert not warned and store.read_manifest()["stages"]["evaluate"]["status"] == "done"


def test_a_changed_model_loses_them_and_evaluate_is_marked_stale(tmp_path):
    store = _run(tmp_path, scored_model_hash="h1")
    warned = []
    scores = stored_scores(store, _trained(tmp_path, "h2"), True, warned.append)
    assert scores == {"base": SCORES["base"]}  # the base model's scores do not depend on training
    entry = store.read_manifest()["stages"]["evaluate"]
    assert entry["status"] == "stale" and entry["scores"] == scores and entry["metrics"] == {"base/average": 0.61}
    assert "kalm run --run-id r --only evaluate" in entry["note"] and "--only evaluate" in warned[0]
    row = next(line for line in _stage_rows(store.read_manifest()["stages"]) if line.startswith("| evaluate"))
    assert "stale" in row and "trained/average" not in row and "--only evaluate" in row


def test_scores_without_the_model_hash_are_not_trusted_for_a_retrained_model(tmp_path):
    store = _run(tmp_path)  # recorded before evaluate stored the scored model's hash
    assert "trained" not in stored_scores(store, _trained(tmp_path, "h1"), True, lambda m: None)


def test_a_rerun_after_evaluate_changes_nothing(tmp_path):
    store = _run(tmp_path, scored_model_hash="h1")
    assert stored_scores(store, _trained(tmp_path, "h2"), False, lambda m: None) == SCORES


def test_the_gate_is_told_why_a_rerun_before_evaluate_has_no_scores(tmp_path):
    # Case 12's second command: the retrained model changed, evaluate is stale; the gate's reason says
    # that and how to score it, not "evaluation produced none".
    store = _run(tmp_path, scored_model_hash="h1")
    stored_scores(store, _trained(tmp_path, "h2"), True, lambda _: None)
    assert unscored_reason(store) == ("evaluate was not rerun: the trained model changed after these scores were "
                                      "measured; kalm run --run-id r --only evaluate scores it")
    never = RunStore(tmp_path / "runs", "fresh")  # no evaluate recorded at all
    assert unscored_reason(never) == "evaluate has not scored it; kalm run --run-id fresh --only evaluate scores it"
