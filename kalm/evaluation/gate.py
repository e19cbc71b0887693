"""Quality gate: a run's model is promoted only if it is not worse than the current one.

The registry ``<runs_dir>/promoted.json`` holds ``current`` (the promoted model: run id, model
path, fingerprint, scores, time) and ``history`` (every decision, promoted or not). It is
rewritten atomically, so a crash never leaves half a registry.

Rule: compare averages on the tasks both models were scored on; promote unless the new average
is more than ``margin`` below the current model's. The first model is promoted; a model sharing
no task with the current one is not (nothing shows it is as good: score it on those tasks). A
current model whose folder was deleted since (a user freeing disk by removing an old run) can no
longer be served: the next model is judged against the latest promoted model that still exists (or
as the first one), and the reason names the run whose model was gone.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Optional

from kalm.store import atomic_write_json

REGISTRY = "promoted.json"
_lock = threading.Lock()


def registry_path(runs_dir: Path) -> Path:
    return Path(runs_dir) / REGISTRY


def load_registry(runs_dir: Path) -> dict[str, Any]:
    p = registry_path(runs_dir)
    if not p.exists():
        return {"current": None, "history": []}
    try:
        reg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e.msg}); restore it or delete it to start a new registry") from e
    reg.setdefault("current", None)
    reg.setdefault("history", [])
    return reg


def current_model(runs_dir: Path) -> Optional[dict[str, Any]]:
    """The promoted model's registry entry, or None."""
    return load_registry(runs_dir)["current"]


def _valid(scores: Optional[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for t, v in ((scores or {}).get("tasks") or {}).items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(f):
            out[t] = f
    return out


def decide(scores: Optional[dict[str, Any]], current: Optional[dict[str, Any]], margin: float,
           unscored: Optional[str] = None, first_because: str = "no model was promoted before") -> dict[str, Any]:
    """The decision alone (no registry I/O): ``{"promoted", "reason", ...}``; every reason starts with
    its verdict (``promoted: `` or ``not promoted: ``).

    ``unscored``: why the model has no scores when the caller knows (e.g. a rerun that stopped before
    evaluate, with the command that scores it); default: evaluation produced none. ``first_because``:
    why there is no current model to compare with (the reason of a first model)."""
    ours = _valid(scores)
    if not ours:
        return {"promoted": False,
                "reason": f"not promoted: the model has no scores ({unscored or 'evaluation produced none'})"}
    if current is None:
        avg = sum(ours.values()) / len(ours)
        return {"promoted": True, "average": avg, "tasks": sorted(ours),
                "reason": f"promoted: {first_because}; this one becomes current (average {avg:.4f} "
                          f"on {len(ours)} tasks)"}
    theirs_all = _valid(current.get("scores"))
    shared = sorted(set(ours) & set(theirs_all))
    if not shared:
        return {"promoted": False, "tasks": [],
                "reason": (f"not promoted: it shares no task with the current model {current.get('model')} "
                           f"(run {current.get('run_id')}, scored on {sorted(theirs_all)}; this run on "
                           f"{sorted(ours)}), so nothing shows it is as good; evaluate it on the current "
                           "model's tasks")}
    mine = sum(ours[t] for t in shared) / len(shared)
    theirs = sum(theirs_all[t] for t in shared) / len(shared)
    delta = mine - theirs
    common = {"average": mine, "current_average": theirs, "delta": delta, "margin": margin, "tasks": shared,
              "current_run": current.get("run_id"), "current_model": current.get("model")}
    if delta < -margin:
        return {"promoted": False, **common,
                "reason": (f"not promoted: average {mine:.4f} on {len(shared)} shared task(s) ({', '.join(shared)}) "
                           f"is {-delta:.4f} below the current model's {theirs:.4f} (run {current.get('run_id')}), "
                           f"more than the allowed margin {margin}; the current model stays")}
    return {"promoted": True, **common,
            "reason": (f"promoted: average {mine:.4f} on {len(shared)} shared task(s) is not worse than the current "
                       f"model's {theirs:.4f} (run {current.get('run_id')}) by more than the margin {margin} "
                       f"(delta {delta:+.4f}); it becomes current")}


def _missing_model(entry: Optional[dict[str, Any]]) -> Optional[str]:
    """The entry's local model path when that folder no longer exists, else None (remote
    references such as ``s3://`` or a hub id with no local folder recorded are not checked)."""
    model = (entry or {}).get("model")
    if not model or "://" in str(model) or not Path(str(model)).is_absolute():
        return None
    return None if Path(str(model)).exists() else str(model)


def run_flags(runs_dir: Path, run_id: str) -> list[str]:
    """The flags the run's stages raised (``info["flags"]`` of their results in its manifest, e.g. a
    generate stage cut by its time budget or keeping few examples): the gate's decision names them."""
    try:
        stages = json.loads((Path(runs_dir) / run_id / "manifest.json").read_text()).get("stages") or {}
    except (OSError, ValueError):
        return []
    return [f"{name}: {f}" for name, s in stages.items() if isinstance(s, dict)
            for f in ((s.get("result") or {}).get("info") or {}).get("flags") or []]


def verdict_text(decision: dict[str, Any]) -> str:
    """``**promoted**: <reason>`` (or ``**not promoted**: ...``) for reports, without repeating the verdict
    that most reasons already start with."""
    verdict = "promoted" if decision.get("promoted") else "not promoted"
    reason = str(decision.get("reason", ""))
    return f"**{verdict}**: {reason.removeprefix(verdict + ': ')}"


def gate(scores: Optional[dict[str, Any]], model_path: str, run_id: str, runs_dir: Path, margin: float,
         fingerprint: Optional[str] = None, promote: bool = True, unscored: Optional[str] = None) -> dict[str, Any]:
    """Decide, record the decision in the registry, and on promotion make this model the current one.

    Rerunning the gate for a run already recorded replaces that run's earlier decision (a cached
    rerun of the same run must not stack duplicates or compare the run with itself).

    With ``promote=False`` (an ablation or a trial run) the model is judged by the same rule but
    nothing is written: the answer says ``promoted: False`` and what the rule would have decided
    (``would_promote``).
    """
    with _lock:
        reg = load_registry(runs_dir)
        current = reg["current"]
        if current is not None and current.get("run_id") == run_id:
            # Re-deciding the current run: compare with what was current before it.
            earlier = [h for h in reg["history"] if h.get("promoted") and h.get("run_id") != run_id]
            current = earlier[-1] if earlier else None
        gone_run = current.get("run_id") if _missing_model(current) else None
        if gone_run is not None:
            # Judge against the latest promoted model that still exists (none: as the first model).
            alive = [h for h in reg["history"] if h.get("promoted") and h.get("run_id") not in (run_id, gone_run)
                     and not _missing_model(h)]
            current = alive[-1] if alive else None
        decision = decide(scores, current, margin, unscored,
                          first_because="no promoted model exists" if gone_run else "no model was promoted before")
        if gone_run is not None:
            # Named by run id only: nothing recorded points into the deleted folder. The verdict leads, once.
            then = (f"judged against the latest promoted model that still exists (run {current.get('run_id')})"
                    if current else "no earlier promoted model exists either, so this one is judged as the first")
            verdict = "promoted" if decision["promoted"] else "not promoted"
            decision = {**decision, "replaced_missing_run": gone_run,
                        "reason": f"{verdict}: the promoted model of run {gone_run} no longer exists (its folder was "
                                  f"deleted); {then}: {decision['reason'].removeprefix(verdict + ': ')}"}
        flags = run_flags(runs_dir, run_id)
        if flags:
            decision = {**decision, "flags": flags,
                        "reason": decision["reason"] + "; WARNING, this run's data was flagged: " + "; ".join(flags)}
        if not promote:
            return {**decision, "promoted": False, "would_promote": decision["promoted"],
                    "reason": f"promotion is off (evaluate.promote: false); the gate says: {decision['reason']}",
                    "registry": str(registry_path(runs_dir)), "current_run": (reg["current"] or {}).get("run_id")}
        # An absolute path, so that a later gate can tell whether the folder still exists.
        model = str(Path(model_path).resolve()) if Path(str(model_path)).exists() else str(model_path)
        entry = {"run_id": run_id, "model": model, "fingerprint": fingerprint,
                 "scores": {"tasks": _valid(scores), "average": (scores or {}).get("average")},
                 "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **decision}
        reg["history"] = [h for h in reg["history"] if h.get("run_id") != run_id] + [entry]
        if decision["promoted"]:
            reg["current"] = entry
        elif reg["current"] is not None and reg["current"].get("run_id") == run_id:
            reg["current"] = current  # this run was current, but on re-decision it no longer qualifies
        atomic_write_json(registry_path(runs_dir), reg)
    return {**decision, "registry": str(registry_path(runs_dir)),
            "current_run": (reg["current"] or {}).get("run_id")}
