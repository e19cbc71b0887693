"""A case tried as a user would, with the `kalm` CLI: a non-UTF-8 training file (case 05) stops at once
with one short error (file, line, byte offset, fix), exit status 1 and no retry."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


PROJECT = Path(__file__).resolve().parent.parent
CASES = PROJECT.parent / "shared" / "cases"
pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path):
    if not CASES.is_dir():
        pytest.skip("../shared/cases is absent")
    home = tmp_path / "home"
    e = {**os.environ, "KALM_HOME": str(home), "PREFECT_HOME": str(home / "prefect"), "PYTHONUNBUFFERED": "1"}
    e.pop("PREFECT_API_URL", None)
    return e


def _kalm(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kalm.cli", *args], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=600)


def _error_line(p: subprocess.CompletedProcess) -> str:
    """The CLI's own one-line error (Prefect's log lines may follow it on stderr)."""
    lines = [x for x in p.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, p.stderr[-3000:]
    return lines[0]


def test_case05_non_utf8_stops_with_one_error_and_no_retry(env, tmp_path):
    runs = tmp_path / "runs"
    p = _kalm(env, "run", "--config", str(CASES / "05-non-utf8-bytes" / "config.yaml"), "--run-id", "case05",
              "--set", f"runs_dir={runs}")
    assert p.returncode == 2  # a fault in the input, the user's to fix (1: a failure a retry may mend)
    last = _error_line(p)
    assert last.startswith("error: stage 'ingest' failed: IngestError: dataset 'latin1': ")
    assert "pairs_latin1.jsonl line 1, column 59 (byte offset 58)" in last and "re-save it as UTF-8" in last
    assert not re.search(r"Retry \d+/\d+|AwaitingRetry", p.stdout + p.stderr)  # Prefect's retry notice
    assert "Traceback" not in p.stdout + p.stderr  # Prefect logs the flow's exception; a data fault needs no trace
    m = json.loads((runs / "case05" / "manifest.json").read_text())
    assert m["status"] == "failed" and m["stages"]["ingest"]["status"] == "failed"
    assert "line 1" in m["stages"]["ingest"]["error"] and "filter" not in m["stages"]
