"""Production orchestration against a real Prefect server on 127.0.0.1: deployments and a
process worker, rerunning one failed stage two ways, and the run page in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
TINY = PROJECT / "tests" / "configs" / "tiny.yaml"
BIN = Path(sys.executable).parent
OUTPUT = PROJECT / "test-output"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def small_tasks(shared_data, tmp_path_factory) -> Path:
    """A 150-pair STS-B test slice laid out like ../shared/data, so evaluation takes seconds."""
    d = tmp_path_factory.mktemp("tasks")
    (d / "stsb_en").mkdir()
    lines = (shared_data / "stsb_en" / "test.jsonl").read_text().splitlines()[:150]
    (d / "stsb_en" / "test.jsonl").write_text("\n".join(lines) + "\n")
    os.symlink(shared_data / "stsb_en" / "train.jsonl", d / "stsb_en" / "train.jsonl")
    os.symlink(shared_data / "banking77", d / "banking77")
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory, small_tasks) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    e = {**os.environ, "KALM_HOME": str(home), "PREFECT_HOME": str(home / "prefect"), "KALM_DATA_DIR": str(small_tasks),
         "PYTHONUNBUFFERED": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    e.pop("PREFECT_API_URL", None)
    e.pop("KALM_INJECT_FAULT", None)
    return e


def _overrides(env: dict[str, str]) -> list[str]:
    return ["--set", f"runs_dir={env['KALM_HOME']}/runs", "--set", "generate.enabled=false",
            "--set", "train.max_steps=2"]


def _kalm(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "kalm.cli", *args], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _manifest(env: dict[str, str], run_id: str) -> dict:
    return json.loads((Path(env["KALM_HOME"]) / "runs" / run_id / "manifest.json").read_text())


def test_rerun_failed_stage_with_kalm_run_from(env):
    failed = _kalm({**env, "KALM_INJECT_FAULT": "filter"}, "run", "--config", str(TINY), "--run-id", "faulty",
                   *_overrides(env), ok=False)
    assert failed.returncode == 1 and "fault injected into stage 'filter'" in failed.stdout + failed.stderr
    m = _manifest(env, "faulty")
    assert m["status"] == "failed" and m["stages"]["filter"]["status"] == "failed"
    assert "fault injected" in m["stages"]["filter"]["error"]
    ingest_started = m["stages"]["ingest"]["started_at"]
    report = (Path(env["KALM_HOME"]) / "runs" / "faulty" / "report.md").read_text()
    assert "filter" in report and "fault injected" in report  # the failed stage's error is in the report

    _kalm(env, "run", "--config", str(TINY), "--run-id", "faulty", "--from", "filter", *_overrides(env))
    m = _manifest(env, "faulty")
    assert m["status"] == "done"
    assert m["stages"]["ingest"]["started_at"] == ingest_started  # finished stage taken from the run, not redone
    for stage in ("filter", "train", "evaluate"):
        assert m["stages"][stage]["status"] in ("done", "cached")
    assert (Path(env["KALM_HOME"]) / "runs" / "faulty" / "train" / "model" / "modules.json").exists()


def test_only_on_a_new_run_ends_after_the_stages_asked_for(env):
    """`--only ingest` on a new run whose config turns generation off: the disabled generate stage runs
    (skipped: it has no output to take), ingest runs, and the run ends there, done, saying how to go on (it
    used to fail on the missing filter stage and record that failure on generate)."""
    proc = _kalm(env, "run", "--config", str(TINY), "--run-id", "only-new", "--only", "ingest", *_overrides(env))
    assert json.loads(proc.stdout.strip().splitlines()[-1])["scores"] == {}
    m = _manifest(env, "only-new")
    assert m["status"] == "done" and m["stopped_before"] == "filter"
    assert m["stages"]["ingest"]["status"] in ("done", "cached") and m["stages"]["generate"]["status"] == "skipped"
    assert "filter" not in m["stages"]
    report = (Path(env["KALM_HOME"]) / "runs" / "only-new" / "report.md").read_text()
    assert "Stopped before **filter**" in report and "kalm run --run-id only-new --from filter" in report
    # An upstream stage that is missing is still an error (nothing to build on), not a stop; on a run id
    # that does not exist it is said before any run folder is made (a mistyped id leaves no junk run).
    missing = _kalm(env, "run", "--config", str(TINY), "--run-id", "only-new-2", "--only", "train",
                    *_overrides(env), ok=False)
    assert missing.returncode == 2 and "has no finished 'ingest' stage to build on" in missing.stderr
    assert f"kalm run --config {TINY} --run-id only-new-2 --only ingest filter train" in missing.stderr
    assert "there is no run 'only-new-2'" in missing.stderr and "newest first: only-new" in missing.stderr
    assert not (Path(env["KALM_HOME"]) / "runs" / "only-new-2").exists()


def test_prefect_flow_run_retry_recomputes_only_the_failed_stage(env):
    failed = _kalm({**env, "KALM_INJECT_FAULT": "train"}, "run", "--config", str(TINY),
                   *_overrides(env), "--set", "train.seed=7", ok=False)
    assert failed.returncode != 0
    runs = sorted((Path(env["KALM_HOME"]) / "runs").glob("tiny-*"), key=lambda p: p.stat().st_mtime)
    m = json.loads((runs[-1] / "manifest.json").read_text())
    assert m["stages"]["train"]["status"] == "failed"
    retry = subprocess.run([str(BIN / "prefect"), "flow-run", "retry", m["flow_run_id"], "--entrypoint",
                            "flows/retrain.py:retrain"], cwd=PROJECT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert retry.returncode == 0, retry.stdout[-2000:] + retry.stderr[-4000:]
    m2 = json.loads((runs[-1] / "manifest.json").read_text())  # same run folder: the run id follows the flow run
    assert m2["status"] == "done"
    assert m2["stages"]["ingest"]["status"] == "cached" and m2["stages"]["filter"]["status"] == "cached"
    assert m2["stages"]["train"]["status"] == "done"


@pytest.fixture(scope="module")
def server(env):
    port = _free_port()
    log = open(Path(env["KALM_HOME"]) / "server.log", "w")
    # The UI's browser code calls the API at PREFECT_UI_API_URL (default port 4200): point it at this server.
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env={**env, "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/api/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("prefect server did not become healthy in 90 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_deploy_all_and_worker_runs_retrain_then_ui_shows_it(env, server):
    api = {**env, "PREFECT_API_URL": f"{server}/api", "KALM_PROJECT_DIR": str(PROJECT), "PREFECT": str(BIN / "prefect")}
    setup = subprocess.run(["bash", "deployments/setup.sh"], cwd=PROJECT, env=api, capture_output=True, text=True,
                           timeout=300)
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-3000:]
    params = {"config": str(TINY), "overrides": {"runs_dir": f"{env['KALM_HOME']}/runs", "generate.enabled": False,
                                                 "train.max_steps": 2, "train.seed": 11}}
    run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "retrain/retrain-cpu", "--params",
                          json.dumps(params)], cwd=PROJECT, env=api, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    flow_run_id = next(line.split()[-1] for line in run.stdout.splitlines() if "UUID" in line)
    worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "kalm-cpu", "--run-once"],
                            cwd=PROJECT, env=api, capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    state = json.loads(urllib.request.urlopen(f"{server}/api/flow_runs/{flow_run_id}").read())["state"]["type"]
    assert state == "COMPLETED", worker.stdout[-3000:] + worker.stderr[-3000:]

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it where apt-get works)")
    OUTPUT.mkdir(exist_ok=True)
    shot = OUTPUT / "flow-run.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={env['KALM_HOME']}/chromium", "--window-size=1600,1200", "--virtual-time-budget=15000"]
    page = f"{server}/runs/flow-run/{flow_run_id}"

    def dom(url: str) -> str:
        text = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        (OUTPUT / f"{url.rstrip('/').rsplit('/', 1)[-1].split('=')[-1].replace('%20', '-')}.html").write_text(text)
        return text

    task_runs = dom(f"{page}?tab=Task%20Runs")
    for stage in ("ingest", "filter", "train", "evaluate", "report"):
        assert f"{stage}-" in task_runs, f"stage {stage!r} not shown on {page}?tab=Task Runs"
    report = dom(f"{server}/artifacts/key/run-report")
    assert "run-report" in report and "report of run tiny-" in report, f"report artifact not shown at {server}/artifacts"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", f"{page}?tab=Task%20Runs"], capture_output=True,
                   timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
