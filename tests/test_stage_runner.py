"""How a stage's failure is recorded and raised (flows/stage_runner.py): a fault in the inputs is told
by its message alone; any other error keeps its traceback in the manifest and as the raised cause."""

import pickle
import traceback

import pytest

from flows.stage_runner import StageFailed, record_failure
from kalm.errors import DataError
from kalm.store import RunStore


def _fail(store: RunStore, error: Exception) -> StageFailed:
    try:
        raise error
    except Exception as e:
        with pytest.raises(StageFailed) as raised:
            raise record_failure(store, "ingest", e, start=0.0)
    return raised.value


def test_a_data_fault_is_its_message_without_traceback_or_cause(tmp_path):
    store = RunStore(tmp_path, "r")
    failed = _fail(store, DataError("dataset 'd': f.jsonl line 3: field 'query' is empty. Fix: ..."))
    assert str(failed) == ("stage 'ingest' failed: DataError: dataset 'd': f.jsonl line 3: field 'query' is empty. "
                           "Fix: ...")
    assert failed.__cause__ is None and failed.__suppress_context__  # printed alone, as `raise ... from None`
    assert "During handling" not in "".join(traceback.format_exception(failed))
    entry = store.read_manifest()["stages"]["ingest"]
    assert entry["status"] == "failed" and entry["error"].startswith("DataError: dataset 'd'")
    assert not entry.get("log_tail")
    assert failed.data_fault  # `kalm run` exits 2 on it, as `kalm eval` does for a bad task file
    assert pickle.loads(pickle.dumps(failed)).data_fault  # through Prefect's states and remote workers


def test_any_other_error_keeps_its_traceback_and_cause(tmp_path):
    store = RunStore(tmp_path, "r")
    bug = KeyError("student")
    failed = _fail(store, bug)
    assert failed.__cause__ is bug  # as `raise ... from e`: the original traceback is printed first
    assert "KeyError: 'student'" in "".join(traceback.format_exception(failed))
    entry = store.read_manifest()["stages"]["ingest"]
    assert entry["error"] == "KeyError: 'student'" and "Traceback" in entry["log_tail"]
    assert not failed.data_fault  # `kalm run` exits 1
