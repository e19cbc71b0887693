"""``kalm run --run-id R --only/--from`` on a run that does not exist (a mistyped id): refused up front,
naming the runs that exist and both fixes, with no run folder created and no Prefect server started;
a new run whose earlier stages are asked for or disabled still starts (``--only generate``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kalm.config import load_config
from kalm.rerun import missing_run_error
from kalm.store import RunStore

ROOT = Path(__file__).resolve().parent.parent


def test_a_mistyped_run_id_is_refused_before_anything_is_created(tmp_path):
    runs = tmp_path / "runs"
    RunStore(runs, "case12").update_manifest(run_id="case12", status="done")  # the run the user meant
    env = {**os.environ, "KALM_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "kalm.cli", "run", "--run-id", "case21", "--only", "train",
                          "--set", f"runs_dir={runs}"], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    err = out.stderr
    assert "there is no run 'case21'" in err and str(runs) in err and "case12" in err  # the run that exists
    assert "kalm run --run-id case21 --only generate ingest filter train (with the same --set options)" in err
    assert sorted(p.name for p in runs.iterdir()) == ["case12"]  # no folder for the typo
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*.db"))  # no Prefect server


def test_which_partial_runs_can_start_a_new_run(tmp_path):
    cfg = load_config("cpu-demo", {"runs_dir": str(tmp_path / "runs")})
    assert missing_run_error(cfg, "new", {"generate"}) is None  # starts a run (README: 50 personas)
    assert "no finished 'generate' stage" in missing_run_error(cfg, "new", {"ingest"})
    assert "no finished 'ingest' stage" in missing_run_error(cfg, "new", {"generate", "filter"})
    assert "no finished 'generate' stage" in missing_run_error(cfg, "new", {"filter", "train", "evaluate", "report"})
    no_synth = load_config("cpu-demo", {"runs_dir": str(tmp_path / "runs"), "generate.enabled": False})
    assert missing_run_error(no_synth, "new", {"ingest"}) is None  # nothing enabled comes before it
    assert "no finished 'ingest' stage" in missing_run_error(no_synth, "new", {"filter"})
    RunStore(tmp_path / "runs", "old").update_manifest(run_id="old", status="done")
    assert missing_run_error(cfg, "old", {"train"}) is None  # an existing run: its stages are checked later
    # The fixes keep the command's --config (without it they would start a run of the default preset).
    told = missing_run_error(cfg, "typo", {"train"}, config="my.yaml")
    assert "start the run: kalm run --config my.yaml --run-id typo (every stage), or kalm run --config my.yaml " \
           "--run-id typo --only generate ingest filter train" in told and "--set" not in told
