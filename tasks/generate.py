"""Prefect subflow: synthetic data generation as one cached task per shard of personas.

Each shard's cache key is its personas, the generation settings, the prompt templates and the
kalm code; never the run id. Kill a run at any point and rerun: finished shards come from
the cache (or from disk), only missing ones are generated. Shards fan out over the task
runner named in the config (threads/processes here; Dask or Ray clusters elsewhere).

``time_budget_s`` is a safety cap, not a setting of the result: the first run under a cap that
stops early records how many shards it finished (a *cutoff*, keyed like the shards plus the cap),
and an unchanged rerun serves exactly those shards from the cache instead of generating more, so
what a run produces never depends on the machine's speed on a second try. A higher cap or more
personas is a new key: only the shards missing from it are generated.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from prefect import flow, task

from kalm.stage import StageResult
from kalm.store import atomic_write_json, hash_strings, link_tree
from kalm.synth.config import GenerateConfig
from tasks.common import ProgressArtifact, artifact_key, code_version, results_dir

_BACKENDS: dict[str, Any] = {}


def backend_key(cfg: GenerateConfig) -> str:
    """What a loaded backend depends on: the same key reuses the loaded model."""
    return hash_strings([cfg.backend, cfg.model, cfg.openai.model_dump_json(), cfg.vllm.model_dump_json(),
                         str(cfg.batch_size), str(cfg.top_p), str(cfg.repetition_penalty),
                         str(cfg.ngram_ban), str(cfg.seed)])


def _backend(cfg: GenerateConfig):
    """One backend (model load) per process, shared by every shard it runs."""
    key = backend_key(cfg)
    if key not in _BACKENDS:
        from kalm.synth.backends import make_backend

        _BACKENDS[key] = make_backend(cfg, api_key=_api_key(cfg))
    return _BACKENDS[key]


def _api_key(cfg: GenerateConfig) -> str | None:
    """The HTTP backend's key: a Prefect Secret block when named, else the environment (never logged)."""
    if cfg.backend != "openai":
        return None
    if cfg.openai.api_key_secret_block:
        from prefect.blocks.system import Secret

        return Secret.load(cfg.openai.api_key_secret_block).get()
    return os.environ.get(cfg.openai.api_key_env)


def _shard_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    from kalm.synth.generate import shard_key
    from kalm.synth.prompts import templates_hash

    cfg: GenerateConfig = parameters["cfg"]
    return "generate-shard-" + hash_strings([shard_key(cfg, parameters["personas"]), templates_hash(cfg),
                                             code_version("generate"), str(parameters["shard_index"])])


def _retry_can_help(task, task_run, state) -> bool:  # noqa: ARG001 - Prefect's retry_condition_fn signature
    """Retry a shard after transient failures only: never a refused schema, a refused key or bad input."""
    from kalm.synth.backends.openai_http import RequestsRejected

    try:
        state.result()
    except (RequestsRejected, ValueError, KeyError, TypeError):
        return False
    except Exception as e:  # noqa: BLE001 - classified below
        return type(e).__name__ not in ("AuthenticationError", "PermissionDeniedError", "NotFoundError")
    return True


def _personas_cache_key(context: Any, parameters: dict[str, Any]) -> str:  # noqa: ARG001 - Prefect's signature
    """Text-to-persona's result depends on the persona settings, the corpus's content, the generator
    (model and decoding settings: ``backend_key``), the templates and the code; never the run id."""
    from kalm.synth.prompts import templates_hash
    from tasks.common import content_hash

    cfg: GenerateConfig = parameters["cfg"]
    settings = cfg.personas.model_dump_json(exclude={"seed_corpus"})  # its content counts, not where it lies
    return "derive-personas-" + hash_strings([settings, content_hash(cfg.personas.seed_corpus),
                                              backend_key(cfg), templates_hash(cfg), code_version("generate")])


@task(name="derive-personas", retries=2, retry_delay_seconds=10, retry_condition_fn=_retry_can_help,
      cache_key_fn=_personas_cache_key, persist_result=True, result_storage=results_dir(), tags=["gpu"])
def derive_personas_task(cfg: GenerateConfig) -> dict[str, Any]:
    """Text-to-persona over ``generate.personas.seed_corpus``, cached: a rerun (or a run that only
    changes later settings) reuses the personas instead of running the LLM over the corpus again.
    Returns ``{"personas": [...], "report": {texts_read, kept, rejected, seconds}}``."""
    from kalm.synth.personas import load_personas

    report: dict[str, Any] = {}
    return {"personas": load_personas(cfg, backend=_backend(cfg), report=report), "report": report}


@task(name="generate-shard", retries=2, retry_delay_seconds=10, retry_condition_fn=_retry_can_help,
      cache_key_fn=_shard_cache_key, persist_result=True, result_storage=results_dir(), tags=["gpu"])
def generate_shard_task(cfg: GenerateConfig, personas: list[str], shard_index: int, run_dir: str) -> StageResult:
    from kalm.synth.generate import generate_shard

    progress = ProgressArtifact(f"generate-shard-{shard_index}", f"Generating shard {shard_index}")
    result = generate_shard(cfg, personas, shard_index, Path(run_dir) / "generate" / "shards", _backend(cfg),
                            progress=progress)
    progress.close()
    return result


def _runner(cfg: GenerateConfig):
    """The configured task runner; on Ray each shard task asks for its backend's GPUs (tasks/runners.py)."""
    from tasks.runners import task_runner

    return task_runner(cfg)


def _cutoff_path(cfg: GenerateConfig, personas: list[str]) -> Path:
    """Where a capped run's cutoff is recorded: keyed by what its shards depend on, plus the cap."""
    from kalm.synth.generate import shard_key
    from kalm.synth.prompts import templates_hash

    key = hash_strings([shard_key(cfg, personas), templates_hash(cfg), code_version("generate"),
                        str(cfg.personas_per_shard), repr(cfg.time_budget_s)])
    return results_dir() / "generate-cutoffs" / f"{key}.json"


def _read_cutoff(path: Path) -> Optional[int]:
    try:
        return int(json.loads(path.read_text())["shards_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no record (or a damaged one): this run sets it


@flow(name="generate")
def _generate_flow(cfg: GenerateConfig, run_dir: str) -> StageResult:
    from prefect.artifacts import create_table_artifact

    from kalm.synth.generate import merge_shards, plan_shards
    from kalm.synth.personas import load_personas, persona_shortfall

    out = Path(run_dir) / "generate"
    shards_dir = out / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    if cfg.personas.seed_corpus:
        derived = derive_personas_task(cfg)
        personas, persona_report = derived["personas"], derived["report"]
    else:
        personas, persona_report = load_personas(cfg), None
    plan = plan_shards(cfg, personas)
    cutoff_file = _cutoff_path(cfg, personas) if cfg.time_budget_s is not None else None
    cutoff = _read_cutoff(cutoff_file) if cutoff_file else None
    todo = plan[:cutoff] if cutoff is not None else plan  # an unchanged rerun of a capped run: the same shards
    progress = ProgressArtifact("generate-progress", f"Generating {len(todo)} shards")
    start, results, cached_shards = time.perf_counter(), [], 0
    wave = 1 if cfg.task_runner == "sequential" else cfg.max_workers
    for w in range(0, len(todo), wave):
        if (cutoff is None and w and cfg.time_budget_s is not None
                and time.perf_counter() - start > cfg.time_budget_s):
            break  # the cap: recorded below, so a rerun of this config serves the same shards
        if cfg.task_runner == "sequential":
            # Called, not submitted, a task runs in the flow's own thread: generating from a pool
            # thread was ~10 % slower here (torch on CPU), and one shard at a time needs no pool.
            states = [generate_shard_task(cfg, todo[w], w, run_dir, return_state=True)]
        else:
            futures = [generate_shard_task.submit(cfg, todo[i], i, run_dir) for i in range(w, min(w + wave, len(todo)))]
            for f in futures:
                f.wait()
            states = [f.state for f in futures]
        for state in states:
            r = state.result()  # raises the shard's error once its retries are spent
            cached_shards += state.name == "Cached"
            if r.missing_outputs():  # cached result whose files (or shards) were deleted
                i = len(results)
                r = generate_shard_task.with_options(refresh_cache=True)(cfg, todo[i], i, run_dir)
            if Path(r.out_dir).resolve() != shards_dir.resolve():
                for p in r.outputs:
                    link_tree(p, shards_dir / p.name)
                r = r.relocated(shards_dir)
            results.append(r)
        progress(len(results) / max(len(todo), 1), f"{len(results)}/{len(todo)} shards")
    progress.close()
    if cutoff_file is not None and cutoff is None:
        atomic_write_json(cutoff_file, {"shards_done": len(results), "shards_planned": len(plan),
                                        "time_budget_s": cfg.time_budget_s,
                                        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    merged = merge_shards(cfg, results, out, planned=len(plan), personas_report=persona_report)
    short = persona_shortfall(cfg, personas)
    if short:
        merged.info["flags"].append(short)
    merged.counts["personas"] = len(personas)
    merged.info["all_cached"] = cached_shards == len(results)
    merged.info["cached_shards"] = cached_shards
    merged.info["skipped_shard_indices"] = list(range(len(results), len(plan)))  # a higher cap generates these
    stats = merged.info["stats"]
    create_table_artifact(key=artifact_key("generate-stats"), description="synthetic data: accepted and dropped",
                          table=[{"what": "accepted", "count": stats["accepted"]},
                                 {"what": "asked for", "count": stats["asked"]},
                                 {"what": "shards (planned)", "count": f"{stats['shards']} ({stats['planned_shards']})"},
                                 *[{"what": f"dropped: {k}", "count": v} for k, v in sorted(stats["dropped"].items())],
                                 *[{"what": f"task type: {k}", "count": v} for k, v in stats["by_task_type"].items()],
                                 *[{"what": f"language: {k}", "count": v} for k, v in stats["by_language"].items()],
                                 *([{"what": "personas derived (texts read)",
                                     "count": f"{persona_report['kept']} ({persona_report['texts_read']})"},
                                    *[{"what": f"persona answer dropped: {k}", "count": v}
                                      for k, v in sorted(persona_report["rejected"].items())]]
                                   if persona_report else []),
                                 *[{"what": "FLAG", "count": f} for f in merged.info["flags"]]])
    if stats.get("low_yield") and cfg.on_low_yield == "fail":
        from kalm.synth.generate import LowYieldError

        raise LowYieldError(next(f for f in merged.info["flags"] if f.startswith("generation kept"))
                            + " (set generate.on_low_yield: flag to go on with what was kept)")
    for flag in merged.info["flags"]:
        from prefect import get_run_logger

        get_run_logger().warning(flag)
    return merged


def generate_stage(cfg: GenerateConfig, run_dir: str) -> StageResult:
    """The generate stage of a run: the shard subflow on the configured task runner (or nothing when disabled)."""
    if not cfg.enabled:
        out = Path(run_dir) / "generate"
        out.mkdir(parents=True, exist_ok=True)
        return StageResult(stage="generate", out_dir=out, counts={"accepted": 0}, info={"disabled": True})
    return _generate_flow.with_options(task_runner=_runner(cfg))(cfg=cfg, run_dir=run_dir)
