"""Case 12: rerunning the train stage of a finished run with a changed setting trains under that
setting (a checkpoint is resumed only by the configuration that wrote it), and `kalm run --run-id R
--only train` without --config uses R's recorded config."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kalm.store import hash_file

PROJECT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _train_entry(runs: Path, run_id: str) -> dict:
    return json.loads((runs / run_id / "manifest.json").read_text())


def _state(runs: Path) -> tuple[dict, str, list[dict]]:
    m = _train_entry(runs, "case12")
    train_dir = runs / "case12" / "train"
    with open(train_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return m, hash_file(train_dir / "model" / "model.safetensors"), rows


def test_case12_rerun_with_a_changed_setting_trains_afresh(shared_data, tmp_path, monkeypatch, capsys):
    from kalm.cli import main

    monkeypatch.chdir(PROJECT)  # the case's data paths are relative to the project
    config = str(shared_data.parent / "cases" / "12-rerun-train-changed-config" / "config.yaml")
    runs = tmp_path / "runs"
    where = f"runs_dir={runs}"

    assert main(["run", "--config", config, "--run-id", "case12", "--set", where]) == 0
    m1, h1, rows1 = _state(runs)
    t1 = m1["stages"]["train"]
    assert t1["status"] == "done" and t1["counts"]["steps"] == 6 and t1["counts"]["tokens"] > 0 and len(rows1) == 6

    # No --config: the run's recorded config, with the new learning rate on top -> 6 fresh steps.
    assert main(["run", "--run-id", "case12", "--only", "train", "--set", "train.learning_rate=1e-4",
                 "--set", where]) == 0
    m2, h2, rows2 = _state(runs)
    t2 = m2["stages"]["train"]
    assert m2["config"]["train"]["learning_rate"] == 1e-4 and m2["config"]["name"] == "case12"
    assert t2["status"] == "done" and t2["counts"]["steps"] == 6 and t2["counts"]["steps_trained"] == 6
    assert t2["counts"]["tokens"] > 0 and t2["metrics"]["final_loss"] == t2["metrics"]["final_loss"]  # not nan
    assert h2 != h1 and [r["loss"] for r in rows2] != [r["loss"] for r in rows1]
    # Evaluate was not rerun: the old model's score is not presented (or gated) as the new model's.
    assert "trained" in m1["scores"] and "trained" not in m2["scores"] and m2["gate"]["promoted"] is False
    # evaluate recorded which model it scored (by content); that model is gone, so its row is stale.
    assert m1["stages"]["evaluate"]["scored_model_hash"] == m1["stages"]["train"]["output_hashes"]["model"]
    assert m2["stages"]["evaluate"]["status"] == "stale" and "trained/average" not in m2["stages"]["evaluate"]["metrics"]
    # The gate says why it has no scores and how to get them (it said "evaluation produced none").
    assert m2["gate"]["reason"].startswith("not promoted: the model has no scores (evaluate was not rerun: the "
                                           "trained model changed") and "--only evaluate scores it" in m2["gate"]["reason"]
    report = (runs / "case12" / "report.md").read_text()
    assert "**not promoted**: the model has no scores (evaluate was not rerun" in report
    assert float(rows2[0]["lr"]) == pytest.approx(1e-4)  # no warmup at 6 steps: step 1 uses the full rate

    # The case's own command (with --config, which matches the run apart from keys set with --set): a 4-step model,
    # still at the learning rate set on the last rerun, which the command says.
    capsys.readouterr()
    assert main(["run", "--config", config, "--run-id", "case12", "--only", "train", "--set", "train.max_steps=4",
                 "--set", where]) == 0
    assert "keeps the settings given with --set on its earlier reruns: train.learning_rate=1e-4" in capsys.readouterr().err
    m3, h3, rows3 = _state(runs)
    t3 = m3["stages"]["train"]
    assert t3["status"] == "done" and t3["counts"]["steps"] == 4 and t3["counts"]["steps_trained"] == 4
    assert len(rows3) == 4 and h3 not in (h1, h2)

    # Unchanged rerun: the final checkpoint of this very configuration is exported again, 0 steps
    # trained, and the manifest does not call it a new training.
    assert main(["run", "--run-id", "case12", "--only", "train", "--set", where]) == 0
    m4, h4, _ = _state(runs)
    t4 = m4["stages"]["train"]
    assert t4["status"] == "cached" and t4["counts"]["steps_trained"] == 0 and t4["counts"]["steps"] == 4
    assert h4 == h3

    # A --config that differs from the run's: refused, naming the differences.
    capsys.readouterr()
    assert main(["run", "--config", "cpu-demo", "--run-id", "case12", "--only", "train", "--set", where]) == 2
    err = capsys.readouterr().err
    assert "differs from the config run 'case12' was made with" in err and "name: 'cpu-demo' in cpu-demo" in err
