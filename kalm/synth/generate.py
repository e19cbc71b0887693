"""Two-stage persona prompting (KaLM on e5-mistral's templates): brainstorm tasks per persona, then
write examples per task; symmetric STS and bitext in one stage.

The persona conditions the brainstorm only (KaLM: a persona in both stages conflicts with the task
the first stage wrote); ``persona_in: both`` keeps it in the example stage too, for ablations.
STS and bitext have no brainstorm, so their one prompt carries the persona as the topic.
Each example draws e5-mistral's knobs (query type, query length, clarity, difficulty, document
length, and the template's own options) from the config, seeded by ``generate.seed``, the persona,
the task and the example's index; its JSON schema bounds every field by its drawn length
(kalm/synth/tasks.py) and its token budget follows from them.

The work is cut into shards (ranges of personas); each shard writes one Parquet file atomically,
so a killed run loses at most the shard in progress. A shard's content follows from the config,
the seed and its personas alone (every prompt, knob, schema and seed is derived from them).
"""

from __future__ import annotations

import json
import string
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from kalm.errors import DataError
from kalm.schema import Example, read_examples, write_examples
from kalm.stage import Progress, StageResult, no_progress
from kalm.store import atomic_write_json, atomic_write_text, hash_outputs, hash_strings
from kalm.synth.config import GenerateConfig
from kalm.synth.dedup import deduplicate
from kalm.synth.prompts import render, task_specs
from kalm.synth.tasks import (KINDS, SCHEMA_TASK_TYPE, SINGLE_STAGE, answer_schema, brainstorm_schema,
                              brainstorm_tokens, example_types, field_bounds, max_new_tokens)
from kalm.synth.validate import Brainstorm, check_example, language_detector, parse, parse_example

LANGUAGE_NAMES = {"en": "English", "zh": "Chinese", "es": "Spanish", "fr": "French", "de": "German",
                  "ja": "Japanese", "ru": "Russian", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
                  "pl": "Polish", "ko": "Korean", "ar": "Arabic"}
KNOB_NAMES = ("query_type", "query_length", "clarity", "difficulty", "num_words")
REJECT_SAMPLE_PER_REASON = 5  # raw outputs kept per drop reason and shard, for inspection


class LowYieldError(DataError):
    """The generate stage kept fewer examples than ``generate.min_yield`` asks for.

    A ``DataError``: the answers were judged, so generating again (a retry) writes the same ones; the
    message (count, reasons, a rejected sample, the fix) is what the manifest and report show."""


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
                                       "max_workers", "near_dup_threshold", "personas", "min_yield",
                                       "on_low_yield"})
    relevant["vllm"] = {k: v for k, v in relevant["vllm"].items() if k not in ("data_parallel_size",
                                                                               "gpu_memory_utilization")}
    relevant["openai"] = {k: v for k, v in relevant["openai"].items()
                          if k in ("model_name", "response_format")}  # where and how fast, not what
    return hash_strings([json.dumps(relevant, sort_keys=True, default=str), *personas])


def _pick(options: list, *parts: Any) -> Any:
    return options[int(hash_strings([str(p) for p in parts])[:8], 16) % len(options)]


def _placeholders(cfg: GenerateConfig, template: str) -> set[str]:
    from kalm.synth.prompts import template_text

    return {name for _, name, _, _ in string.Formatter().parse(template_text(cfg, template)) if name}


def example_job(cfg: GenerateConfig, specs: dict[str, dict[str, Any]], persona: str, template: str, task: str,
                k: int) -> dict[str, Any]:
    """One example prompt: its knobs drawn, rendered, with its JSON schema, bounds and token budget."""
    spec = specs[template]

    def draw(name: str, options: list) -> Any:
        return _pick(options, cfg.seed, persona, template, task, k, name)

    used = _placeholders(cfg, template)
    knobs = {name: draw(name, getattr(cfg.knobs, name)) for name in KNOB_NAMES}
    knobs.update({name: draw(name, options) for name, options in spec.get("options", {}).items()})
    if template == "bitext":
        source = draw("source_language", cfg.languages)
        target = draw("target_language", [x for x in cfg.languages if x != source])
        languages, label = (source, target, target), f"{source}-{target}"
    else:
        language = draw("language", cfg.languages)
        languages, label = (language,) * 3, language
    num_words = knobs["num_words"]
    bounds = field_bounds(cfg, template, num_words, languages)
    values = {"persona": persona, "task": task, "language": LANGUAGE_NAMES.get(languages[1], languages[1]),
              "source_language": LANGUAGE_NAMES.get(languages[0], languages[0]),
              "text_words": cfg.lengths.text_words, **knobs}
    content = render(cfg, template, **values)
    if cfg.persona_in == "both" and template not in SINGLE_STAGE:
        content = render(cfg, "persona_prefix", persona=persona) + "\n" + content
    return {"persona": persona, "template": template, "task": task, "language": label, "languages": languages,
            "knobs": {n: v for n, v in knobs.items() if n in used}, "bounds": bounds, "keys": spec["keys"],
            "schema": answer_schema(spec["keys"], bounds), "max_new_tokens": max_new_tokens(cfg, template, num_words),
            "chat": [{"role": "user", "content": content}]}


def examples_asked(cfg: GenerateConfig, personas: int) -> int:
    """Examples a shard of ``personas`` asks for when every brainstorm succeeds."""
    return personas * len(example_types(cfg)) * cfg.tasks_per_persona * cfg.examples_per_task


def generate_shard(cfg: GenerateConfig, personas: list[str], shard_index: int, out_dir: Path, backend,
                   progress: Optional[Progress] = None) -> StageResult:
    """Generate and validate one shard; writes ``shard-XXXXX.parquet``, its stats and rejected samples."""
    progress = progress or no_progress
    start = time.perf_counter()
    out_dir = Path(out_dir)
    specs = task_specs(cfg)
    types = example_types(cfg)
    detect = language_detector(cfg.languages)
    reasons: Counter = Counter()
    rejected: list[dict[str, Any]] = []

    # Stage 1: each persona brainstorms task definitions for each two-stage task type.
    jobs = [(p, t) for p in personas for t in types if t not in SINGLE_STAGE]
    chats = [[{"role": "user", "content": render(
        cfg, "brainstorm", persona=p, n=cfg.tasks_per_persona, what=specs[t]["what"],
        guideline=specs[t]["guideline"], examples="\n".join(f"- {e}" for e in specs[t]["examples"]))}]
        for p, t in jobs]
    raws = backend.generate(chats, brainstorm_schema(cfg.tasks_per_persona), brainstorm_tokens(cfg),
                            cfg.temperature, cfg.seed + shard_index) if jobs else []
    tasks = []
    for (persona, task_type), chat, raw in zip(jobs, chats, raws):
        answer, reason = parse(raw, Brainstorm)
        if answer is None:
            reasons[f"brainstorm_{reason}"] += 1
            rejected.append({"stage": "brainstorm", "reason": reason, "raw": str(raw)[:500]})
            continue
        for t in answer.tasks[:cfg.tasks_per_persona]:
            t = " ".join(t.split())
            if t.lower() in " ".join(chat[0]["content"].lower().split()):
                reasons["brainstorm_copied_prompt"] += 1  # an example task copied back
                rejected.append({"stage": "brainstorm", "reason": "copied_prompt", "raw": t})
                continue
            tasks.append((persona, task_type, t))
    progress(0.3, f"shard {shard_index}: {len(tasks)} tasks")

    # Stage 2: per task (or per persona for single-stage types) examples with drawn knobs.
    jobs2 = [example_job(cfg, specs, persona, task_type, task, k)
             for persona, task_type, task in tasks for k in range(cfg.examples_per_task)]
    jobs2 += [example_job(cfg, specs, persona, t, specs[t]["instruction"], k)
              for persona in personas for t in types if t in SINGLE_STAGE
              for k in range(cfg.tasks_per_persona * cfg.examples_per_task)]
    raws = backend.generate([j["chat"] for j in jobs2], [j["schema"] for j in jobs2],
                            [j["max_new_tokens"] for j in jobs2], cfg.temperature,
                            cfg.seed + 7919 * (shard_index + 1)) if jobs2 else []
    examples = []
    for job, raw in zip(jobs2, raws):
        answer, reason = parse_example(raw, job["keys"])
        if answer is not None:
            lang = job["languages"][0] if job["template"] != "bitext" else job["languages"][:2]
            reason = check_example(answer, lang, detect, prompt=job["chat"][-1]["content"], bounds=job["bounds"])
        if reason is not None:
            reasons[reason] += 1
            rejected.append({"stage": "example", "reason": reason, "task_type": job["template"], "raw": str(raw)[:500]})
            continue
        examples.append(Example(
            task_type=SCHEMA_TASK_TYPE[job["template"]], instruction=job["task"], query=answer.query.strip(),
            positive=answer.positive.strip(), negatives=[answer.hard_negative.strip()], language=job["language"],
            source="synthetic", persona=job["persona"],
            metadata={"shard": shard_index, "template": job["template"], **job["knobs"]}))
    name = f"shard-{shard_index:05d}"
    path = write_examples(examples, out_dir / f"{name}.parquet")
    stats = {"shard": shard_index, "personas": len(personas), "tasks": len(tasks), "prompts": len(jobs) + len(jobs2),
             "asked": examples_asked(cfg, len(personas)), "accepted": len(examples), "dropped": dict(reasons),
             "by_task_type": dict(Counter(e.metadata["template"] for e in examples)),
             "by_language": dict(Counter(e.language for e in examples))}
    atomic_write_json(out_dir / f"{name}.stats.json", stats)
    atomic_write_text(out_dir / f"{name}.rejected.jsonl", _rejected_sample(rejected))
    progress(1.0, f"shard {shard_index}: {len(examples)} examples")
    return StageResult(stage="generate", out_dir=out_dir, outputs=[path], hashes=hash_outputs(out_dir, [path]),
                       counts={"accepted": len(examples), "dropped": sum(reasons.values()), "prompts": stats["prompts"]},
                       seconds=time.perf_counter() - start, info={"stats": stats})


def merge_shards(cfg: GenerateConfig, shards: list[StageResult], out_dir: Path, planned: Optional[int] = None,
                 personas_report: Optional[dict] = None) -> StageResult:
    """Deduplicate across shards (exact + MinHash) into ``examples.parquet`` with ``stats.json``.

    ``planned``: shards in the plan; fewer finished means the time budget cut the run, which the
    result says in ``info["truncated"]`` and ``info["flags"]``. A yield under ``generate.min_yield``
    is flagged too (the caller fails the stage on it unless ``on_low_yield: flag``). ``personas_report``
    (text-to-persona's counts, ``kalm.synth.personas.personas_from_corpus``) goes into the stats as ``personas``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    planned = len(shards) if planned is None else planned
    files = [p for s in shards for p in s.parquet_files()]
    rows = read_examples(files).to_pylist() if files else []
    kept, dup_counts = deduplicate(rows, cfg.near_dup_threshold)
    path = write_examples(kept, out_dir / "examples.parquet")
    dropped: Counter = Counter()
    for s in shards:
        dropped.update(s.info["stats"]["dropped"])
    dropped.update({k: v for k, v in dup_counts.items() if v})
    prompts = sum(s.counts.get("prompts", 0) for s in shards)
    asked = sum(s.info["stats"].get("asked", 0) for s in shards)
    skipped = planned - len(shards)
    stats = {"shards": len(shards), "planned_shards": planned, "skipped_shards": skipped, "asked": asked,
             "generated": len(rows), "accepted": len(kept), "dropped": dict(dropped),
             "by_task_type": dict(Counter(json.loads(r["metadata"]).get("template", r["task_type"]) for r in kept)),
             "by_language": dict(Counter(r["language"] for r in kept)), "prompts": prompts,
             "generation_seconds": round(sum(s.seconds for s in shards), 2),
             **({"personas": personas_report} if personas_report else {})}
    flags = []
    if skipped:
        stats["truncated"] = {"shards_done": len(shards), "shards_planned": planned,
                              "time_budget_s": cfg.time_budget_s}
        flags.append(f"truncated by generate.time_budget_s {cfg.time_budget_s:g}: {len(shards)} of {planned} shards "
                     "(an unchanged rerun serves this from the cache; raise the budget to generate the rest)")
    low = low_yield(cfg, stats)
    if low:
        stats["low_yield"] = True
        flags.append(low + _rejected_hint(shards))
    stats_path = atomic_write_json(out_dir / "stats.json", stats)
    counts = {"accepted": len(kept), "generated": len(rows), "asked": asked, "shards": len(shards),
              "skipped_shards": skipped, **{f"dropped_{k}": v for k, v in dropped.items()}}
    return StageResult(stage="generate", out_dir=out_dir, outputs=[path, stats_path],
                       hashes=hash_outputs(out_dir, [path]), counts=counts,
                       seconds=time.perf_counter() - start + stats["generation_seconds"],
                       info={"stats": stats, "flags": flags, **({"truncated": stats["truncated"]} if skipped else {})})


def _rejected_hint(shards: list[StageResult]) -> str:
    """The first rejected answer and where the samples are, for an error a person can act on."""
    for s in shards:
        f = Path(s.out_dir) / f"shard-{s.info['stats']['shard']:05d}.rejected.jsonl"
        if f.exists() and f.stat().st_size:
            first = json.loads(f.read_text(encoding="utf-8").splitlines()[0])
            return (f"; first rejected ({first['reason']}): {first['raw'][:200]!r}; "
                    f"samples in {Path(s.out_dir)}/shard-*.rejected.jsonl")
    return ""


def low_yield(cfg: GenerateConfig, stats: dict[str, Any]) -> Optional[str]:
    """A message when fewer than ``min_yield`` of the examples asked for were kept, else None.

    A run that keeps nothing is low-yield at any positive ``min_yield``, however few it asked for;
    ``min_yield: 0`` turns the check off (a run that may keep nothing, e.g. a tiny rehearsal)."""
    asked, accepted = stats["asked"], stats["accepted"]
    if asked == 0 or cfg.min_yield == 0 or accepted > 0 and accepted >= cfg.min_yield * asked:
        return None
    top = sorted(stats["dropped"].items(), key=lambda kv: -kv[1])[:3]
    reasons = ", ".join(f"{k} {v}" for k, v in top) or "no answers"
    return (f"generation kept {accepted} of {asked} examples asked for ({accepted / asked:.1%} < generate.min_yield "
            f"{cfg.min_yield:g}); drops: {reasons}")
