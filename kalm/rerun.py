"""Which config a ``kalm run`` uses: for an existing run, the config recorded in its manifest.

``kalm run --run-id R --only train`` reruns a stage on R's stored inputs, so it must run under
R's config, not a default preset: without ``--config`` the recorded config is used; ``--set``
applies on top of it (the changed settings are recorded, so a later ``--config FILE`` that
was R's file still matches); an explicit ``--config`` must match R's recorded config except
for keys changed with ``--set`` now or in an earlier rerun, or the command stops and lists
what differs.

Example::

    cfg, source, record = run_config(None, "case12", {"train.learning_rate": 1e-4})
    cfg.train.learning_rate          # 1e-4; every other setting as recorded in runs/case12/manifest.json
    record                           # {"rerun_overrides": {"train.learning_rate": 0.0001}}
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from kalm.config import (DEFAULT_PRESET, ConfigError, RunConfig, _format_errors, _set_dotted, _source, _substitute,
                         check_config_paths, load_config)
from kalm.stage import STAGES
from kalm.store import MANIFEST


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def config_differences(a: dict[str, Any], b: dict[str, Any], ignore: set[str] = frozenset()) -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two config dumps, skipping ``ignore`` keys and their subkeys."""
    fa, fb = _flatten(a), _flatten(b)
    skip = tuple(k + "." for k in ignore)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k) and k not in ignore and not k.startswith(skip)]


def recorded_manifest(runs_dir: Path, run_id: Optional[str]) -> dict[str, Any]:
    if not run_id:
        return {}
    path = Path(runs_dir) / run_id / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def run_config(config: Optional[str], run_id: Optional[str], overrides: Optional[dict[str, Any]] = None
               ) -> tuple[RunConfig, str, dict[str, Any]]:
    """The config of a ``kalm run``: ``(config, where it came from, fields to record in the manifest)``.

    Raises:
        ConfigError: an explicit ``config`` that differs from the run's recorded one (each difference
            named, with both values and the fix), or an invalid config.
    """
    overrides = dict(overrides or {})
    candidate = load_config(config, overrides) if config is not None else None
    runs_dir = candidate.runs_dir if candidate is not None else Path(overrides.get("runs_dir", RunConfig().runs_dir))
    manifest = recorded_manifest(runs_dir, run_id)
    recorded = manifest.get("config")
    if recorded is None:  # a new run
        cfg = candidate if candidate is not None else load_config(DEFAULT_PRESET, overrides)
        return cfg, str(config or DEFAULT_PRESET), {}
    earlier = dict(manifest.get("rerun_overrides") or {})
    if candidate is not None:
        diffs = config_differences(candidate.model_dump(mode="json"), recorded, set(earlier) | set(overrides))
        if diffs:
            lines = [f"  - {k}: {va!r} in {config}, {vb!r} in run {run_id!r}" for k, va, vb in diffs[:20]]
            more = f"\n  ... and {len(diffs) - 20} more" if len(diffs) > 20 else ""
            raise ConfigError(
                f"--config {config} differs from the config run {run_id!r} was made with "
                f"({Path(runs_dir) / run_id / MANIFEST}):\n" + "\n".join(lines) + more +
                f"\nDrop --config to rerun with the run's own config (change settings with --set key=value), "
                f"or give a new --run-id to start a run with {config}.")
    raw = copy.deepcopy(recorded)
    for key, value in overrides.items():
        _set_dotted(raw, key, value)
    source = manifest.get("config_source") or f"run {run_id}"
    try:
        cfg = RunConfig.model_validate(raw)
        # --set values may name "{data_dir}" (e.g. the ablation's per-seed ingest.datasets, taken from the
        # YAML): resolved here as load_config resolves it; the recorded config holds resolved paths.
        data_dir = cfg.resolved_data_dir()
        cfg = RunConfig.model_validate(_substitute(raw, "{data_dir}", str(data_dir or "<no data_dir>")))
    except ValidationError as e:
        raise ConfigError(_format_errors(e, _source(f"run {run_id}'s recorded config", overrides), overrides)) from None
    check_config_paths(cfg, source=_source(f"run {run_id}'s recorded config", overrides), overrides=overrides)
    return cfg, source, {"rerun_overrides": {**earlier, **overrides}} if overrides else {}


def carried_overrides(runs_dir: Path, run_id: Optional[str], overrides: Optional[dict[str, Any]] = None
                      ) -> dict[str, Any]:
    """Settings given with ``--set`` on earlier reruns of ``run_id`` that ``overrides`` does not set again:
    they are part of the run's config now, so they still apply (also under an explicit ``--config``)."""
    earlier = recorded_manifest(runs_dir, run_id).get("rerun_overrides") or {}
    return {k: v for k, v in earlier.items() if k not in (overrides or {}) and k != "runs_dir"}


def select_stages(only: Optional[list[str]] = None, start: Optional[str] = None) -> set[str]:
    """Stages to (re)compute: all, the ``only`` list, or ``start`` and everything after it."""
    for s in (only or []) + ([start] if start else []):
        if s not in STAGES:
            raise ValueError(f"unknown stage {s!r}: choose from {', '.join(STAGES)}")
    if only:
        return set(only)
    if start:
        return set(STAGES[STAGES.index(start):])
    return set(STAGES)


def stage_disabled(cfg: RunConfig, name: str) -> bool:
    """Whether ``cfg`` turns stage ``name`` off (``<stage>.enabled: false``): it has no output to take."""
    return getattr(getattr(cfg, name, None), "enabled", True) is False


def missing_run_error(cfg: RunConfig, run_id: str, asked: set[str], runs_dir: Optional[Path] = None,
                      config: Optional[str] = None, sets: bool = False) -> Optional[str]:
    """Why ``kalm run --run-id RUN_ID --only/--from`` cannot start, before anything is created, or None.

    ``asked``: the stages to (re)compute. For a run with no recorded manifest (a new id, or a mistyped
    one) every stage before the last one asked for must be asked for too or be disabled in ``cfg``
    (``--only generate`` starts a run; ``--only ingest`` does too when generation is off), since there
    is no run to take it from. Otherwise the answer names the run folder that is missing, the runs
    that exist, and both fixes (with ``--config config`` when the command gave one, and a reminder of
    its ``--set`` options when ``sets``). An existing run returns None: its stored stages are checked
    when the flow takes them (``flows.stage_runner.stored_result``)."""
    runs_dir = Path(runs_dir or cfg.runs_dir)
    if recorded_manifest(runs_dir, run_id):
        return None
    last = max(STAGES.index(s) for s in asked)
    needed = [s for s in STAGES[:last] if s not in asked and not stage_disabled(cfg, s)]
    if not needed:
        return None
    runs = sorted((p for p in runs_dir.glob(f"*/{MANIFEST}")), key=lambda p: p.stat().st_mtime, reverse=True)
    names = [p.parent.name for p in runs[:10]]
    listed = (f"runs there, newest first: {', '.join(names)}" + (" ..." if len(runs) > 10 else "")
              if names else "there are no runs there yet")
    first = STAGES.index(needed[0])
    start = f"kalm run{f' --config {config}' if config else ''} --run-id {run_id}"
    return (f"there is no run {run_id!r} in {runs_dir} (no {run_id}/{MANIFEST}; {listed}), so it has no "
            f"finished {needed[0]!r} stage to build on. Check the run id, or start the run: "
            f"{start} (every stage), or {start} --only {' '.join(STAGES[first:last + 1])}"
            + (" (with the same --set options)" if sets else ""))
