"""Run one stage task inside a flow and keep the run folder and manifest in step with it.

A stage served from Prefect's cache returns the result an earlier run wrote; its files are
hard-linked into this run's folder so every run folder is complete on its own. A cached
result whose files were deleted since (someone cleaned ``runs/``) is recomputed.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from kalm.stage import STAGES, StageResult
from kalm.store import RunStore, link_tree


class StageFailed(RuntimeError):
    """A stage raised; the manifest and report already say which and why.

    ``data_fault``: the cause is the user's to fix, in the inputs (a ``kalm.errors.DataError``: file, row,
    field, fix) or in the command (no finished stage to build on); retrying cannot help. ``kalm run`` then
    exits 2, as ``kalm eval`` does for a bad task file, and 1 for any other failure.
    """

    def __init__(self, message: str, data_fault: bool = False):
        super().__init__(message)
        self.data_fault = data_fault

    def __reduce__(self):  # pickled (Prefect states, Dask/Ray workers) with its flag
        return type(self), (str(self), self.data_fault)

    @property
    def exit_status(self) -> int:
        """The CLI's exit status: 2 for a data fault, 1 otherwise."""
        return 2 if self.data_fault else 1


class DataFaultWithoutTraceback(logging.Filter):
    """Drops the traceback from a log record of a ``StageFailed`` chained to nothing (a data fault).

    Prefect's flow engine logs the exception that ends a flow run with ``logger.exception``; for a
    fault in the inputs that prints a traceback of the flow's own frames above the message (file,
    row, field, fix) that is all the user needs. Other failures keep their traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, StageFailed) and error.data_fault:  # the flag survives pickling; __cause__ does not
            record.exc_info, record.exc_text = None, None
        return True


def quiet_data_faults(logger_name: str = "prefect.flow_runs") -> None:
    """Install ``DataFaultWithoutTraceback`` on Prefect's flow-run logger (once)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, DataFaultWithoutTraceback) for f in logger.filters):
        logger.addFilter(DataFaultWithoutTraceback())


def check_inputs(store: RunStore, stage: str, upstream: list[StageResult]) -> None:
    """Raise ``MissingInputError`` when an input of ``stage`` (an upstream stage's output) is gone.

    A stage rerun alone (``--only``) takes its inputs from the run folder; a file deleted there since
    cannot reappear by retrying, so the stage stops before it starts and says how to recompute it.
    """
    for r in upstream:
        gone = r.missing_outputs()
        if gone:
            from kalm.errors import MissingInputError

            shown = ", ".join(str(p) for p in gone[:3]) + (f" and {len(gone) - 3} more" if len(gone) > 3 else "")
            raise MissingInputError(
                f"input of stage {stage!r} is missing: {shown} (output of stage {r.stage!r}, deleted from the run "
                f"folder?). Fix: recompute it and what follows: kalm run --run-id {store.run_id} --from {r.stage}")


def record_failure(store: RunStore, stage: str, error: Exception, start: float) -> StageFailed:
    """Record ``error`` as ``stage``'s failure in the manifest; return the ``StageFailed`` to raise.

    Call it in the ``except`` block that caught ``error``. A fault in the inputs (a ``DataError``) is
    told by its message (file, row, field, fix): no traceback in the manifest and report, and the
    returned exception is chained to nothing (as ``raise ... from None``); anything else keeps its
    traceback and is chained to ``error`` (as ``raise ... from error``).
    """
    data_fault = _is_data_fault(error)
    store.record_stage(stage, status="failed", seconds=round(time.perf_counter() - start, 2),
                       error=f"{type(error).__name__}: {error}",
                       log_tail=None if data_fault else traceback.format_exc()[-3000:])
    failed = StageFailed(f"stage {stage!r} failed: {type(error).__name__}: {error}", data_fault=data_fault)
    failed.__cause__, failed.__suppress_context__ = (None if data_fault else error), True
    return failed


def _is_data_fault(error: Exception) -> bool:
    """A fault in the inputs (``kalm.errors.DataError``): retrying or a traceback would not help."""
    from kalm.errors import DataError

    return isinstance(error, DataError)


def adopt(store: RunStore, stage: str, result: StageResult) -> tuple[StageResult, str | None]:
    """Make ``result``'s files part of this run; return the relocated result and the source run id."""
    here = store.root / stage
    if Path(result.out_dir).resolve() == here.resolve():
        return result, None
    link_tree(result.out_dir, here)
    source_run = Path(result.out_dir).resolve().parent.name
    return result.relocated(here), source_run


def _refreshed(call: Callable[..., Any], refresh: bool) -> Callable[..., Any]:
    """The task with its cache bypassed (recomputed and re-cached) when ``refresh``.

    Subflows (generation) cache per shard inside; they are returned unchanged.
    """
    from prefect import Task

    return call.with_options(refresh_cache=True) if refresh and isinstance(call, Task) else call


def run_stage(store: RunStore, stage: str, call: Callable[..., StageResult], *, refresh: bool = False,
              config_hash: str = "", upstream: list[StageResult] | None = None, **kwargs: Any) -> StageResult:
    """Call ``call`` (a Prefect task or subflow) for ``stage`` with ``kwargs`` and record it in the manifest;
    ``upstream`` are the results it depends on (their content hashes are recorded)."""
    store.record_stage(stage, fresh=True, status="running", started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                       config_hash=config_hash, input_hashes=[r.content_hash() for r in upstream or []])
    start = time.perf_counter()
    try:
        check_inputs(store, stage, upstream or [])
        if os.environ.get("KALM_INJECT_FAULT") == stage:
            # Fault injection for tests and drills: the stage fails as a real error would.
            raise RuntimeError(f"fault injected into stage {stage!r} (KALM_INJECT_FAULT)")
        from prefect import Flow, Task

        if isinstance(call, (Task, Flow)):
            state = _refreshed(call, refresh)(**kwargs, return_state=True)
            result, cached = state.result(), state.name == "Cached"
        else:  # a stage that orchestrates its own cached tasks (generation's shards)
            result = call(**kwargs)
            cached = bool(result.info.get("all_cached"))
        if result.missing_outputs():
            # Cached result of a run whose folder was deleted: compute it again.
            result, cached = _refreshed(call, True)(**kwargs), False
        result, source_run = adopt(store, stage, result)
        # A training whose configuration had already finished trained 0 steps: not a new training.
        cached = cached or bool(result.info.get("reused_final_checkpoint"))
    except Exception as e:
        raise record_failure(store, stage, e, start)
    wall = time.perf_counter() - start
    store.record_stage(
        stage, status="skipped" if result.info.get("disabled") else "cached" if cached or source_run else "done",
        cached_from=source_run, seconds=round(wall, 2),
        compute_seconds=round(result.seconds, 2), counts=result.counts, metrics=result.metrics,
        output_hashes=result.hashes, result=result.model_dump(mode="json"),
        **({"base_model": result.info["base_model"]} if "base_model" in result.info else {}),
    )
    return result


def has_stored_result(store: RunStore, stage: str) -> bool:
    """Whether this run's manifest holds a finished ``stage``'s result."""
    return "result" in (store.read_manifest().get("stages", {}).get(stage) or {})


def stored_result(store: RunStore, stage: str, asked: Sequence[str] = ()) -> StageResult:
    """A finished stage's result from this run's manifest (for ``--only`` / ``--from`` reruns).

    ``asked``: the stages after ``stage`` up to the last one the rerun was asked for; the error for a missing
    ``stage`` then offers to run it with them (``--from`` would also run every stage after them)."""
    entry = store.read_manifest().get("stages", {}).get(stage)
    if not entry or "result" not in entry:
        fix = (f"--only {stage} {' '.join(asked)}" if asked else f"--from {stage}")
        raise StageFailed(
            f"run {store.run_id!r} has no finished {stage!r} stage to build on; run it first "
            f"(kalm run --run-id {store.run_id} {fix})", data_fault=True
        )
    return StageResult.model_validate(entry["result"])
