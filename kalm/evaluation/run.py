"""Evaluate a model with mteb on local task folders or mteb's named tasks and benchmarks.

``evaluate_model`` is the whole stage for one model: resolve the tasks, look each up in the
results cache, run mteb's own evaluation for the rest (mteb writes its result files under
``output/mteb``), and return ``{"tasks": {name: main score}, "average": x, ...}`` on mteb's
0-1 scale. Named tasks and benchmarks are fetched by mteb from the hub (real code, needs the
hub); local folders need nothing but their files.

Each model is loaded the leaderboard's way (``kalm.evaluation.model.choose_loader``: mteb's
registered loader for models mteb knows, mteb's sentence-transformers wrapper with the model's
saved prompts otherwise); the summary says which (``loader``). Retrieval searches the corpus in
chunks of ``corpus_chunk_size`` documents (mteb's own chunked exact search: encode a chunk, score
it against all queries, keep each query's running top-k), so memory is bounded by the chunk, not
the corpus: about ``corpus_chunk_size * (dim + queries) * 4`` bytes besides the model.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from kalm.evaluation.config import EvalTask
from kalm.evaluation.errors import EvalError, EvalModelError, EvalTaskError
from kalm.evaluation.tasks import folder_fingerprint, is_task_folder, load_local_task, mteb_task_name
from kalm.stage import Progress, no_progress
from kalm.store import atomic_write_json, hash_strings

log = logging.getLogger(__name__)


@dataclass
class TaskSpec:
    """One task to evaluate: mteb name, local folder (None = mteb's own data from the hub), fingerprint
    and, for a local folder, the subsample size (``kalm.evaluation.subsample``; None = all of it)."""

    name: str
    folder: Optional[Path]
    fingerprint: str
    max_samples: Optional[int] = None

    def load(self):
        import mteb

        if self.folder:
            return load_local_task(self.folder, self.name, self.max_samples)
        return mteb.get_task(self.name)


# ---------------------------------------------------------------- which tasks
def split_names(text: str) -> list[str]:
    """Comma-separated names; commas inside parentheses belong to the name (``MTEB(eng, v2)``)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_task_argument(tasks: str) -> tuple[list[EvalTask], list[str]]:
    """The CLI's PATH_OR_NAMES -> (tasks, benchmark names).

    A folder holding task folders (like ../shared/data), one task folder, or comma-separated
    mteb task and benchmark names.
    """
    p = Path(tasks).expanduser()
    if p.is_dir():
        if is_task_folder(p):
            return [EvalTask(name=mteb_task_name(p), local=str(p.resolve()))], []
        found = [EvalTask(name=mteb_task_name(d), local=str(d.resolve())) for d in sorted(p.iterdir())
                 if is_task_folder(d)]
        if not found:
            raise EvalTaskError(f"--tasks {tasks}: folder holds no task folders (subfolders with test.jsonl or "
                                "corpus.jsonl); point at a folder like ../shared/data or at one task folder")
        return found, []
    if tasks.startswith((".", "/", "~")) or re.search(r"[\\/]", tasks.split("(")[0]):
        raise EvalTaskError(f"--tasks {tasks}: no such folder; give an existing folder or mteb task/benchmark names")
    import mteb

    names, benchmarks = [], []
    for name in split_names(tasks):
        try:
            mteb.get_task(name)
            names.append(EvalTask(name=name))
            continue
        except KeyError:
            pass
        try:
            mteb.get_benchmark(name)
            benchmarks.append(name)
        except (KeyError, ValueError) as e:
            raise EvalTaskError(f"--tasks: {name!r} is neither a folder nor an mteb task or benchmark name "
                                f"({e}); check the spelling, e.g. STSBenchmark or 'MTEB(eng, v2)'") from None
    return names, benchmarks


def task_folder(task: EvalTask, data_dir: Optional[Path]) -> Optional[Path]:
    """The local folder of ``task`` when it exists (absolute, or relative to ``data_dir``)."""
    if not task.local:
        return None
    p = Path(task.local).expanduser()
    if not p.is_absolute():
        if data_dir is None:
            return None
        p = Path(data_dir) / p
    return p.resolve() if is_task_folder(p) else None


def resolve_tasks(tasks: Iterable[EvalTask], benchmarks: Iterable[str] = (),
                  data_dir: Optional[Path] = None) -> list[TaskSpec]:
    """Local folders where present, else mteb's named tasks (data from the hub); benchmarks expanded."""
    specs: list[TaskSpec] = []
    named: list[str] = []
    for t in tasks:
        folder = task_folder(t, data_dir)
        if folder is not None:
            sample = f":sample{t.max_samples}" if t.max_samples else ""
            specs.append(TaskSpec(t.name, folder, f"local:{t.name}:{folder_fingerprint(folder)}{sample}",
                                  t.max_samples))
        else:
            if t.max_samples:
                log.warning("task %s: max_samples=%d applies to local task folders only; mteb's task from the "
                            "hub is scored in full", t.name, t.max_samples)
            if t.local:
                log.warning("task %s: local folder %r not found under %s; using mteb's task from the hub",
                            t.name, t.local, data_dir)
            named.append(t.name)
    if named or benchmarks:
        import mteb

        for name in named:
            try:
                task = mteb.get_task(name)
            except KeyError as e:
                raise EvalTaskError(f"evaluate task {name!r}: no local folder found and mteb has no such task ({e}); "
                                    "fix the name or its 'local' folder under data_dir") from None
            specs.append(TaskSpec(name, None, _hub_fingerprint(task)))
        for b in benchmarks:
            try:
                bench = mteb.get_benchmark(b)
            except (KeyError, ValueError) as e:
                raise EvalTaskError(f"evaluate.benchmarks: unknown mteb benchmark {b!r} ({e})") from None
            specs.extend(TaskSpec(t.metadata.name, None, _hub_fingerprint(t)) for t in bench.tasks)
    seen: set[str] = set()
    unique = []
    for s in specs:  # a task listed twice (or also in a benchmark) is evaluated once
        if s.name not in seen:
            seen.add(s.name)
            unique.append(s)
    return unique


def _hub_fingerprint(task) -> str:
    md = task.metadata
    return f"hub:{md.name}:{md.dataset.get('path')}@{md.dataset.get('revision')}:{','.join(task.eval_splits)}:" \
           f"{','.join(task.hf_subsets)}"


def task_set_fingerprint(tasks: Iterable[EvalTask], benchmarks: Iterable[str] = (),
                         data_dir: Optional[Path] = None) -> str:
    """Names, local data contents and mteb version: what evaluation results depend on besides the model."""
    from kalm.evaluation.results import code_fingerprint, mteb_version

    specs = resolve_tasks(tasks, benchmarks, data_dir)
    return hash_strings([f"mteb={mteb_version()}", code_fingerprint(), *sorted(s.fingerprint for s in specs)])


# ---------------------------------------------------------------- evaluating
def evaluate_model(model_ref: str, tasks: list[EvalTask] | str, output: Path, data_dir: Optional[Path] = None,
                   batch_size: int = 64, matryoshka_dim: Optional[int] = None, progress: Optional[Progress] = None,
                   *, benchmarks: Iterable[str] = (), corpus_chunk_size: int = 50_000,
                   cache_dir: Optional[Path] = None, use_cache: bool = True,
                   refresh: bool = False, max_samples: Optional[int] = None) -> dict[str, Any]:
    """Score ``model_ref`` on ``tasks``; returns ``{"tasks": {name: main score}, "average": x, ...}`` (0-1).

    ``tasks`` is a list of ``EvalTask`` or the CLI's PATH_OR_NAMES string. mteb's own result files
    are written under ``output/mteb``; the summary also goes to ``output/summary.json``. Scores
    come from the results cache when the same weights were scored on the same task data before.
    ``refresh`` recomputes every task (and rewrites its cache entry); ``use_cache=False`` neither
    reads nor writes the cache. ``max_samples``: the subsample size of local tasks that set none
    (``kalm.evaluation.subsample``; the task's notes say what was kept). Extra keys: ``subsets``
    (per-language scores), ``types`` (mteb task type), ``by_type`` (average per type), ``seconds`` and
    ``cached`` (per task), ``notes`` (per task: what was left out of the score and why), ``max_samples``
    (subsampled local tasks and their size), ``loader`` (how the model was loaded), ``model``, ``fingerprint``.
    """
    from kalm.evaluation.model import choose_loader
    from kalm.evaluation.results import ResultsCache, mteb_version, result_key
    from kalm.models import model_fingerprint

    progress = progress or no_progress
    benchmarks = list(benchmarks)
    if isinstance(tasks, str):
        tasks, more = parse_task_argument(tasks)
        benchmarks += more
    if max_samples is not None and max_samples < 1:
        raise EvalTaskError(f"max_samples is {max_samples}: give a positive number of samples per task, or leave "
                            "--max-samples out to score every task in full")
    if max_samples:
        tasks = [t if t.max_samples else t.model_copy(update={"max_samples": max_samples}) for t in tasks]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    specs = resolve_tasks(tasks, benchmarks, data_dir)
    if not specs:
        raise EvalTaskError("no evaluation tasks: list evaluate.tasks (or benchmarks) in the config, or give --tasks")
    fp = model_fingerprint(model_ref)
    choice = choose_loader(model_ref)
    cache = ResultsCache(cache_dir) if use_cache else None
    encoder = None
    mteb_cache = None
    scores: dict[str, float] = {}
    subsets: dict[str, dict[str, float]] = {}
    types: dict[str, str] = {}
    seconds: dict[str, float] = {}
    cached: list[str] = []
    notes: dict[str, list[str]] = {}
    keys: dict[str, str] = {}
    hits: dict[str, Optional[dict[str, Any]]] = {}
    loaded: dict[str, tuple[Any, float]] = {}
    for spec in specs:
        key = keys[spec.name] = result_key(fp, spec.fingerprint, matryoshka_dim)
        hits[spec.name] = cache.get(key) if cache and not refresh else None
        if hits[spec.name] is None and spec.folder is not None:
            # Read (and check) every local task file before the model loads: a bad row fails in seconds,
            # naming file, line and fix, not after a model load and the tasks before it.
            progress(0.0, f"reading {spec.name}")
            start = time.perf_counter()
            task = spec.load()
            task.load_data()
            loaded[spec.name] = (task, time.perf_counter() - start)
    for i, spec in enumerate(specs):
        progress(i / len(specs), f"{spec.name} ({i + 1}/{len(specs)})")
        key, hit = keys[spec.name], hits[spec.name]
        if hit is not None:
            _restore_mteb_file(hit, output, model_ref, fp, matryoshka_dim)
            entry = hit
            cached.append(spec.name)
        else:
            if encoder is None:
                import mteb

                progress(i / len(specs), f"loading {model_ref} ({choice.describe()})")
                encoder = _load_or_explain(model_ref, matryoshka_dim, fp, choice)
                mteb_cache = mteb.ResultCache(output / "mteb")
            entry, result_file = _run_one(encoder, spec, mteb_cache, batch_size, corpus_chunk_size,
                                          loaded.pop(spec.name, None))
            if cache:
                cache.put(key, entry, result_file)
        scores[spec.name] = entry["score"]
        subsets[spec.name] = entry["subsets"]
        types[spec.name] = entry["type"]
        seconds[spec.name] = entry["seconds"]
        if entry.get("notes"):
            notes[spec.name] = entry["notes"]
            for note in entry["notes"]:
                log.warning("%s: %s", spec.name, note)
        progress((i + 1) / len(specs), f"{spec.name}: {entry['score']:.4f}")
    summary = summarize(scores, types)
    summary.update(model=model_ref, fingerprint=fp, matryoshka_dim=matryoshka_dim, subsets=subsets,
                   seconds=seconds, cached=cached, mteb_version=mteb_version(), result_keys=keys,
                   local={s.name: str(s.folder) for s in specs if s.folder}, notes=notes,
                   max_samples={s.name: s.max_samples for s in specs if s.folder and s.max_samples},
                   loader=choice.describe(), loader_kind=choice.loader)
    atomic_write_json(output / "summary.json", summary)
    return summary


def _load_or_explain(model_ref: str, matryoshka_dim: Optional[int], fp: str, choice):
    """``load_encoder``; a local model that cannot load (missing or corrupt files) is an ``EvalModelError``
    naming the folder and the fix. Hub models keep their own errors (a lost connection is worth a retry)."""
    from kalm.evaluation.model import load_encoder
    from kalm.models import resolve_model

    try:
        return load_encoder(model_ref, matryoshka_dim, fingerprint=fp, choice=choice)
    except EvalError:
        raise
    except Exception as e:
        if not resolve_model(model_ref).is_local:
            raise
        raise EvalModelError(f"model {model_ref} could not be loaded ({choice.describe()}): {type(e).__name__}: "
                             f"{str(e)[:300]}. Check that the folder holds a complete sentence-transformers or "
                             "transformers model (config, weights, tokenizer); re-export or copy it again") from e


def summarize(scores: dict[str, float], types: dict[str, str]) -> dict[str, Any]:
    """Average over tasks and per task type (mteb's type names)."""
    by_type: dict[str, list[float]] = {}
    for name, s in scores.items():
        by_type.setdefault(types.get(name, "?"), []).append(s)
    return {"tasks": dict(scores), "average": _mean(scores.values()), "types": dict(types),
            "by_type": {t: _mean(v) for t, v in sorted(by_type.items())}}


def combine_summaries(parts: list[dict[str, Any]], model_ref: Optional[str] = None) -> dict[str, Any]:
    """One summary from per-task summaries (the fan-out path), averages recomputed."""
    scores, types = {}, {}
    extra: dict[str, dict[str, Any]] = {"subsets": {}, "seconds": {}, "local": {}, "result_keys": {}, "notes": {},
                                        "max_samples": {}}
    cached: list[str] = []
    for p in parts:
        scores.update(p["tasks"])
        types.update(p.get("types", {}))
        for k in extra:
            extra[k].update(p.get(k, {}))
        cached += p.get("cached", [])
    out = summarize(scores, types)
    first = parts[0] if parts else {}
    out.update(model=model_ref or first.get("model"), fingerprint=first.get("fingerprint"),
               matryoshka_dim=first.get("matryoshka_dim"), mteb_version=first.get("mteb_version"), cached=cached,
               loader=first.get("loader"), loader_kind=first.get("loader_kind"), **extra)
    return out


def restore_outputs(summary: dict[str, Any], output: Path, cache_dir: Optional[Path] = None) -> bool:
    """Write ``summary`` and mteb's result files for it into ``output`` from the results cache.

    Used when the scores come from elsewhere (Prefect's cache): the run folder still gets its
    mteb files. Returns False when an entry is missing (the caller then evaluates again).
    """
    from kalm.evaluation.results import ResultsCache

    cache = ResultsCache(cache_dir)
    output = Path(output)
    keys = summary.get("result_keys") or {}
    if set(keys) != set(summary.get("tasks", {})):
        return False
    for task, key in keys.items():
        entry = cache.get(key)
        if entry is None:
            return False
        _restore_mteb_file(entry, output, summary["model"], summary["fingerprint"], summary.get("matryoshka_dim"))
    atomic_write_json(output / "summary.json", summary)
    return True


def _mean(values: Iterable[float]) -> float:
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else math.nan


def search_model(encoder, corpus_chunk_size: int):
    """What mteb searches a retrieval corpus with: mteb's ``SearchEncoderWrapper`` (chunked exact
    search, top-k merged per chunk) around an encoder; a model that searches by itself is kept."""
    from mteb.models.search_wrappers import SearchEncoderWrapper

    if hasattr(encoder, "search") or not hasattr(encoder, "encode"):
        return encoder
    return SearchEncoderWrapper(encoder, corpus_chunk_size=corpus_chunk_size)


def _run_one(encoder, spec: TaskSpec, mteb_cache, batch_size: int, corpus_chunk_size: int = 50_000,
             loaded: Optional[tuple[Any, float]] = None) -> tuple[dict[str, Any], Path]:
    """mteb's evaluation of one task; returns the cache entry and the path of mteb's result file.

    ``loaded``: the task with its local data already read, and the seconds that took."""
    import mteb

    task, load_seconds = loaded or (spec.load(), 0.0)
    start = time.perf_counter() - load_seconds
    if spec.folder is not None:
        task.load_data()  # a bad task file stops here with its own error (file, line, fix), not inside mteb
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    # mteb wraps an encoder in this same search wrapper for every retrieval task; we set its chunk size
    model = search_model(encoder, corpus_chunk_size) if isinstance(task, AbsTaskRetrieval) else encoder
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*superseded by.*")
            result = mteb.evaluate(model, task, cache=mteb_cache, overwrite_strategy="always",
                                   encode_kwargs={"batch_size": batch_size}, show_progress_bar=False)
    except Exception as e:
        if spec.folder is None:
            raise EvalTaskError(f"mteb task {spec.name}: {type(e).__name__}: {e}. It has no local folder, so its data "
                                "comes from the Hugging Face hub: run where the hub is reachable (HF_HUB_OFFLINE "
                                "unset) or give a local folder under data_dir") from e
        raise
    if not result.task_results:
        err = result.exceptions[0].exception if result.exceptions else "no result"
        raise EvalTaskError(f"mteb task {spec.name} failed: {err}")
    tr = result.task_results[0]
    per_subset = {}
    for split, rows in tr.scores.items():
        for row in rows:
            label = row["hf_subset"] if len(tr.scores) == 1 else f"{split}/{row['hf_subset']}"
            per_subset[label] = float(row["main_score"])
    entry = {"task": spec.name, "score": float(tr.get_score()), "subsets": per_subset,
             "type": task.metadata.type, "main_score": task.metadata.main_score,
             "seconds": round(time.perf_counter() - start, 2), "dataset_revision": tr.dataset_revision,
             "notes": list(getattr(task, "kalm_notes", []) or [])}
    from kalm.evaluation.results import mteb_result_path

    meta = encoder.mteb_model_meta
    return entry, mteb_result_path(Path(mteb_cache.cache_path), meta.name, meta.revision, spec.name)


def _restore_mteb_file(entry: dict[str, Any], output: Path, model_ref: str, fp: str,
                       matryoshka_dim: Optional[int]) -> None:
    """Put the cached mteb result file (and model_meta.json) where mteb would have written them."""
    from kalm.evaluation.model import result_name_revision
    from kalm.evaluation.results import mteb_result_path
    from kalm.store import atomic_write_bytes

    name, revision = result_name_revision(model_ref, fp, matryoshka_dim)
    path = mteb_result_path(output / "mteb", name, revision, entry["task"])
    atomic_write_bytes(path, Path(entry["mteb_result_file"]).read_bytes())
    meta = Path(entry["mteb_result_file"]).with_name("model_meta.json")
    if meta.exists() and not (path.parent / "model_meta.json").exists():
        # The cached scores may come from a byte-identical model at another path (an earlier run, maybe
        # deleted since): the metadata names this model, as mteb would have written it for this one.
        import json

        from kalm.store import atomic_write_json

        atomic_write_json(path.parent / "model_meta.json",
                          {**json.loads(meta.read_text()), "name": name, "revision": revision})
