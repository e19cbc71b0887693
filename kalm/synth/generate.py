"""Two-stage persona prompting (KaLM): brainstorm tasks per persona, then write examples per task.

The work is cut into shards (ranges of personas); each shard writes one Parquet file
atomically, so a killed run loses at most the shard in progress, and a rerun regenerates
only the missing shards. With greedy decoding (or a fixed seed) a shard is reproducible.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from kalm.schema import Example, read_examples, write_examples
from kalm.stage import Progress, StageResult, no_progress
from kalm.store import atomic_write_json, atomic_write_text, hash_outputs, hash_strings
from kalm.synth.config import GenerateConfig
from kalm.synth.dedup import deduplicate
from kalm.synth.prompts import render, task_types
from kalm.synth.validate import Brainstorm, ExampleAnswer, check_example, json_schema, language_detector, parse

LANGUAGE_NAMES = {"en": "English", "zh": "Chinese", "es": "Spanish", "fr": "French", "de": "German",
                  "ja": "Japanese", "ru": "Russian", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
                  "pl": "Polish", "ko": "Korean", "ar": "Arabic"}
KNOBS = {"length": ["a short phrase", "one sentence", "two sentences"],
         "clarity": ["clear", "slightly ambiguous"],
         "difficulty": ["easy", "hard"]}
REJECT_SAMPLE_PER_REASON = 5  # raw outputs kept per drop reason and shard, for inspection


def _rejected_sample(rejected: list[dict[str, Any]]) -> str:
    """The first few rejected raw outputs of each reason, as JSONL."""
    kept: Counter = Counter()
    lines = []
    for r in rejected:
        if kept[r["reason"]] < REJECT_SAMPLE_PER_REASON:
            kept[r["reason"]] += 1
            lines.append(json.dumps(r, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def plan_shards(cfg: GenerateConfig, personas: list[str]) -> list[list[str]]:
    n = cfg.personas_per_shard
    return [personas[i:i + n] for i in range(0, len(personas), n)]


def shard_key(cfg: GenerateConfig, personas: list[str]) -> str:
    """What a shard's content depends on (templates and code are added by the caller)."""
    relevant = cfg.model_dump(exclude={"enabled", "time_budget_s", "task_runner", "task_runner_address",
                                       "max_workers", "near_dup_threshold", "personas"})
    return hash_strings([json.dumps(relevant, sort_keys=True, default=str), *personas])


def _pick(options: list[str], *parts: Any) -> str:
    return options[int(hash_strings([str(p) for p in parts])[:8], 16) % len(options)]


def generate_shard(cfg: GenerateConfig, personas: list[str], shard_index: int, out_dir: Path, backend,
                   progress: Optional[Progress] = None) -> StageResult:
    """Generate and validate one shard; writes ``shard-XXXXX.parquet``, its stats and rejected samples."""
    progress = progress or no_progress
    start = time.perf_counter()
    out_dir = Path(out_dir)
    types = task_types(cfg)
    detect = language_detector(cfg.languages)
    reasons: Counter = Counter()
    rejected: list[dict[str, Any]] = []

    # Stage 1: each persona brainstorms task definitions for each task type.
    jobs = [(p, t) for p in personas for t in cfg.task_types]
    chats = [[{"role": "user", "content": render(cfg, "brainstorm", persona=p, n=cfg.tasks_per_persona,
                                                  task_description=types[t]["description"])}] for p, t in jobs]
    raws = backend.generate(chats, json_schema(Brainstorm, cfg.tasks_per_persona), min(cfg.max_new_tokens, 128),
                            cfg.temperature, cfg.seed + shard_index)
    tasks = []
    for (persona, task_type), raw in zip(jobs, raws):
        answer, reason = parse(raw, Brainstorm)
        if answer is None:
            reasons[f"brainstorm_{reason}"] += 1
            rejected.append({"stage": "brainstorm", "reason": reason, "raw": raw[:500]})
            continue
        tasks += [(persona, task_type, t.strip()) for t in answer.tasks[:cfg.tasks_per_persona]]
    progress(0.4, f"shard {shard_index}: {len(tasks)} tasks")

    # Stage 2: per task, examples with knobs for length, clarity, difficulty and language.
    jobs2 = []
    for persona, task_type, task in tasks:
        for k in range(cfg.examples_per_task):
            language = _pick(cfg.languages, persona, task, k)
            knobs = {name: _pick(options, persona, task, k, name) for name, options in KNOBS.items()}
            content = render(cfg, "example", persona=persona, task=task, task_type=task_type,
                             language=LANGUAGE_NAMES.get(language, language), guidance=types[task_type]["guidance"],
                             **knobs)
            jobs2.append((persona, task_type, task, language, knobs, [{"role": "user", "content": content}]))
    raws = backend.generate([j[-1] for j in jobs2], json_schema(ExampleAnswer), cfg.max_new_tokens, cfg.temperature,
                            cfg.seed + 7919 * (shard_index + 1))
    examples = []
    for (persona, task_type, task, language, knobs, chat), raw in zip(jobs2, raws):
        answer, reason = parse(raw, ExampleAnswer)
        if answer is not None:
            reason = check_example(answer, language, detect, prompt=chat[-1]["content"])
        if reason is not None:
            reasons[reason] += 1
            rejected.append({"stage": "example", "reason": reason, "task_type": task_type, "raw": raw[:500]})
            continue
        examples.append(Example(task_type=task_type, instruction=task, query=answer.query.strip(),
                                positive=answer.positive.strip(), negatives=[answer.hard_negative.strip()],
                                language=language, source="synthetic", persona=persona,
                                metadata={"shard": shard_index, **knobs}))
    name = f"shard-{shard_index:05d}"
    path = write_examples(examples, out_dir / f"{name}.parquet")
    stats = {"shard": shard_index, "personas": len(personas), "tasks": len(tasks), "prompts": len(jobs) + len(jobs2),
             "accepted": len(examples), "dropped": dict(reasons),
             "by_task_type": dict(Counter(e.task_type for e in examples)),
             "by_language": dict(Counter(e.language for e in examples))}
    atomic_write_json(out_dir / f"{name}.stats.json", stats)
    atomic_write_text(out_dir / f"{name}.rejected.jsonl", _rejected_sample(rejected))
    progress(1.0, f"shard {shard_index}: {len(examples)} examples")
    return StageResult(stage="generate", out_dir=out_dir, outputs=[path], hashes=hash_outputs(out_dir, [path]),
                       counts={"accepted": len(examples), "dropped": sum(reasons.values()), "prompts": stats["prompts"]},
                       seconds=time.perf_counter() - start, info={"stats": stats})


def merge_shards(cfg: GenerateConfig, shards: list[StageResult], out_dir: Path, skipped: int = 0) -> StageResult:
    """Deduplicate across shards (exact + MinHash) into ``examples.parquet`` with ``stats.json``."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    files = [p for s in shards for p in s.parquet_files()]
    rows = read_examples(files).to_pylist() if files else []
    kept, dup_counts = deduplicate(rows, cfg.near_dup_threshold)
    path = write_examples(kept, out_dir / "examples.parquet")
    dropped: Counter = Counter()
    for s in shards:
        dropped.update(s.info["stats"]["dropped"])
    dropped.update(dup_counts)
    prompts = sum(s.counts.get("prompts", 0) for s in shards)
    stats = {"shards": len(shards), "skipped_shards": skipped, "generated": len(rows), "accepted": len(kept),
             "dropped": dict(dropped), "by_task_type": dict(Counter(r["task_type"] for r in kept)),
             "by_language": dict(Counter(r["language"] for r in kept)), "prompts": prompts,
             "generation_seconds": round(sum(s.seconds for s in shards), 2)}
    stats_path = atomic_write_json(out_dir / "stats.json", stats)
    return StageResult(stage="generate", out_dir=out_dir, outputs=[path, stats_path],
                       hashes=hash_outputs(out_dir, [path]),
                       counts={"accepted": len(kept), "generated": len(rows), "shards": len(shards),
                               "skipped_shards": skipped, **{f"dropped_{k}": v for k, v in dropped.items()}},
                       seconds=time.perf_counter() - start + stats["generation_seconds"], info={"stats": stats})
