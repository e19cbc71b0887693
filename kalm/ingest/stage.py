"""The ingest stage: every configured dataset -> a shard folder of examples in the kalm schema.

    ingest/<dataset>.parquet/part-00000.parquet, part-00001.parquet, ...   (rows_per_shard rows each)
    ingest/stats.json                                                      (what happened, per dataset)

Streaming: each dataset is read in Arrow batches, mapped by its format, checked (vectorised),
decontaminated, sampled (``max_rows``), deduplicated across all datasets and written shard by
shard; memory holds a batch (plus the ``max_rows`` sample, the dedup index and, for two-pass
formats, their bounded pools), never a dataset.

Before any work, every dataset is opened, its format chosen (``auto``) and its first block mapped:
a wholly wrong column, a missing column, a file that is not UTF-8 in that block, or an
evaluation folder that cannot be read stops the stage at once with the dataset, file, line,
field and fix (:class:`kalm.ingest.readers.IngestError`, a :class:`kalm.errors.DataError`:
never retried). Bad rows further on are dropped and counted by reason.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from kalm.ingest.config import DatasetSource, IngestConfig
from kalm.ingest.decontaminate import Decontaminator, decontamination_report
from kalm.ingest.dedup import Deduplicator, dedup_report
from kalm.ingest.examples import GROUP_KEY, clean_examples, to_schema
from kalm.ingest.fields import SourceStats
from kalm.ingest.formats import MAPPERS, Context, Mapper, detect_format
from kalm.ingest.noise import swap_positives
from kalm.ingest.formats.beir import BeirSource, hub_beir, local_beir
from kalm.ingest.readers import (ChainSource, IngestError, ParquetSource, RowSource, file_source, hub_source,
                                 local_split)
from kalm.ingest.sampling import Sampler
from kalm.schema import ShardWriter, shard_files
from kalm.stage import Progress, StageResult, no_progress
from kalm.store import atomic_write_json, hash_outputs

log = logging.getLogger(__name__)

Source = Union[RowSource, BeirSource]


@dataclass
class Plan:
    src: DatasetSource
    mapper: Mapper
    source: Source
    stats: SourceStats


def open_source(src: DatasetSource) -> tuple[Optional[Source], str]:
    """The dataset's reader (local copy first, else the hub), or (None, why) for a missing optional split."""
    local = Path(src.path) if src.path is not None else None
    if local is not None and local.exists():
        if local.is_file():
            return file_source(local), ""
        try:
            parts = shard_files(local)
        except FileNotFoundError as e:  # shards the folder's own listing names are gone
            raise IngestError(f"dataset {src.name!r}: {e}. Fix: write the folder again, or point path at "
                              "a complete copy") from None
        if parts:  # a shard folder (another kalm stage's output, Spark/pyarrow datasets layout)
            return ChainSource([ParquetSource(p) for p in parts], str(local)), ""
        if (local / "corpus.jsonl").is_file() and src.format in ("beir", "auto"):
            beir = local_beir(local, src.split)
            if beir is not None:
                return beir, ""
            missing = f"{local} has no qrels/{src.split}.tsv"
        else:
            found = local_split(local, src.split)
            if found is not None:
                return found, ""
            missing = f"{local} has no {src.split}.jsonl, {src.split}.parquet or saved dataset"
        if not src.required:
            return None, missing
        raise IngestError(f"dataset {src.name!r}: {missing}. Fix: set split to one that exists, or "
                          "`required: false` to skip the dataset when the split is absent")
    if src.hf_name is not None:
        return (hub_beir(src) if src.format == "beir" else hub_source(src)), ""
    missing = f"{local} does not exist and no hf_name is given to fall back on"
    if not src.required:
        return None, missing
    raise IngestError(f"dataset {src.name!r}: {missing}. Fix: correct the path")


def choose_format(src: DatasetSource, source: Source, ctx: Context) -> tuple[str, str]:
    if src.format != "auto":
        return src.format, "configured"
    if isinstance(source, BeirSource):
        return "beir", "folder with corpus.jsonl, queries.jsonl and qrels/ (BEIR)"
    head = source.head()
    if head is None:
        raise IngestError(f"dataset {src.name!r}: {source.label} has no rows, so format: auto cannot choose; set format")
    fmt, why = detect_format(head.table.schema, f"dataset {src.name!r}: {head.file}")
    return fmt, f"auto: {why}"


def plan_dataset(src: DatasetSource, ctx: Context) -> tuple[Optional[Plan], str]:
    source, missing = open_source(src)
    if source is None:
        return None, missing
    fmt, why = choose_format(src, source, ctx)
    if fmt == "beir" and not isinstance(source, BeirSource):
        raise IngestError(f"dataset {src.name!r}: format 'beir' needs a folder with corpus.jsonl, queries.jsonl and "
                          f"qrels/{src.split}.tsv (or a hub dataset); {source.label} is not one")
    if fmt != "beir" and isinstance(source, BeirSource):
        raise IngestError(f"dataset {src.name!r}: {source.label} is a BEIR folder; set format: beir (or auto)")
    if src.format == "auto":
        log.info("dataset %r: format auto -> %s (%s)", src.name, fmt, why)
    mapper = MAPPERS[fmt]
    mapper.check(src, source, ctx)
    stats = SourceStats(src.name, format=fmt, format_reason=why)
    return Plan(src, mapper, source, stats), ""


@contextlib.contextmanager
def _named(src: DatasetSource):
    """Every error of a dataset names it (readers only know files)."""
    try:
        yield
    except IngestError as e:
        if str(e).startswith(f"dataset {src.name!r}"):
            raise
        raise IngestError(f"dataset {src.name!r}: {e}") from None


# The source name of each earlier stage's examples (generation's examples say "synthetic").
STAGE_SOURCE = {"generate": "synthetic"}


def with_stage_examples(cfg: IngestConfig, stages: Sequence[StageResult]) -> IngestConfig:
    """``cfg`` plus one dataset (format ``examples``) per example file of the earlier ``stages``
    (the synthetic data), so that those examples are deduplicated against the open datasets and
    decontaminated against the evaluation tasks like them. They come after the open datasets: a
    synthetic example that repeats an open one is the copy removed. A disabled stage adds nothing;
    one that kept no example adds its empty file (the report's ingest table shows its 0 rows)."""
    taken = {d.name for d in cfg.datasets}
    extra = []
    for r in stages:
        if r.info.get("disabled"):
            continue
        files = r.example_files()
        for i, f in enumerate(files):
            name = STAGE_SOURCE.get(r.stage, r.stage) + (f"-{i}" if len(files) > 1 else "")
            while name in taken:  # a user dataset of that name keeps it
                name += "-" + r.stage
            taken.add(name)
            extra.append(DatasetSource(name=name, path=f, format="examples"))
    return cfg.model_copy(update={"datasets": [*cfg.datasets, *extra]}) if extra else cfg


def run_ingest(cfg: IngestConfig, out: Path, progress: Progress | None = None) -> StageResult:
    """Ingest ``cfg.datasets`` into shard folders under ``out``; returns the shard files and stats.

    ``StageResult.info``: ``per_source`` (per dataset: format and why, files, rows_read, examples,
    dropped/skipped by reason with first lines, negatives_removed, decontaminated per task,
    deduplicated, sampled_out, task_types, in_domain), ``decontamination``, ``dedup``,
    ``skipped_datasets`` and ``in_domain_sources``. Metadata key of positive groups: ``group``.

    Raises:
        IngestError: a dataset or evaluation folder that cannot be read or mapped (before any work).
    """
    progress = progress or no_progress
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".ingest-tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    ctx = Context(cfg.batch_size, cfg.pair_pool_per_label, work)
    try:
        plans, skipped = [], {}
        for src in cfg.datasets:
            progress(0.0, f"checking {src.name}")
            with _named(src):
                plan, why = plan_dataset(src, ctx)
            if plan is None:
                skipped[src.name] = why
                log.info("dataset %r skipped: %s", src.name, why)
            else:
                plans.append(plan)
        dc = cfg.decontamination
        decon = Decontaminator(dc) if dc.enabled and dc.tasks else None
        dedup = Deduplicator(cfg.dedup) if cfg.dedup.enabled else None
        detect = None
        if any(p.src.language == "auto" for p in plans):
            from kalm.text import language_detector

            detect = language_detector([])
        outputs: list[Path] = []
        for i, plan in enumerate(plans):
            with _named(plan.src):
                outputs += _ingest_one(plan, cfg, ctx, out, decon, dedup, detect,
                                       lambda msg, i=i: progress(i / max(len(plans), 1), msg))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_source = {p.src.name: p.stats.to_dict(p.src.in_domain) for p in plans}
    summary = {
        "datasets": per_source, "skipped_datasets": skipped,
        "decontamination": decontamination_report(decon, cfg.decontamination),
        "dedup": dedup_report(dedup, cfg.dedup), "group_key": GROUP_KEY,
    }
    stats_path = atomic_write_json(out / "stats.json", summary)
    progress(1.0, "done")
    counts = Counter()
    for s in per_source.values():
        counts["rows_read"] += s["rows_read"]
        counts["examples"] += s["examples"]
        counts["dropped"] += s["dropped_total"]
        counts["decontaminated"] += s["decontaminated_total"]
        counts["deduplicated"] += s["deduplicated_total"]
        for reason, n in s["negatives_removed"].items():  # e.g. a given negative equal to its positive
            counts["negatives_removed"] += n
            counts[f"removed_{reason}"] += n
    return StageResult(
        stage="ingest", out_dir=out, outputs=outputs + [stats_path], hashes=hash_outputs(out, outputs + [stats_path]),
        counts=dict(counts), seconds=time.perf_counter() - start,
        info={"per_source": per_source, "skipped_datasets": skipped,
              "decontamination": summary["decontamination"], "dedup": summary["dedup"], "group_key": GROUP_KEY,
              "in_domain_sources": [p.src.name for p in plans if p.src.in_domain and p.stats.examples]},
    )


def _ingest_one(plan: Plan, cfg: IngestConfig, ctx: Context, out: Path, decon: Optional[Decontaminator],
                dedup: Optional[Deduplicator], detect, progress) -> list[Path]:
    src, stats, mapper = plan.src, plan.stats, plan.mapper
    task_type = src.task_type or mapper.task_type
    sampler = Sampler(src.max_rows, src.seed) if src.max_rows else None

    batches = 0

    def finish(table, sigs=None):
        nonlocal batches
        if dedup is not None:
            table = dedup.apply(table, stats, sigs)
        if src.swap_positives:
            table, planted = swap_positives(table, src.swap_positives, src.seed, batches)
            stats.planted_wrong += planted
        batches += 1
        stats.examples += table.num_rows
        stats.task_types.update(table.column("task_type").to_pylist())
        return table

    with ShardWriter(out / f"{src.name}.parquet", cfg.rows_per_shard) as writer:
        for mapped in mapper.examples(src, plan.source, stats, ctx):
            if src.task_type and "task_type" in mapped.column_names:
                mapped = mapped.drop_columns(["task_type"])  # the config's task type wins over a row's 'type'
            table = to_schema(clean_examples(mapped, stats), src, task_type, detect)
            sigs = shared_signatures(table, decon, dedup) if sampler is None else None
            if decon is not None:
                table, kept = decon.apply(table, stats, sigs)
                sigs = None if sigs is None else (sigs[0][kept], sigs[1][kept])
            if sampler is not None:
                sampler.add(table)
            else:
                writer.write(finish(table, sigs))
            progress(f"{src.name}: {stats.rows_read} rows read, {stats.examples} examples")
        if sampler is not None:
            table = sampler.result()
            if table is not None:
                stats.sampled_out = sampler.seen - table.num_rows
                writer.write(finish(table))
    if stats.examples == 0:
        stats.notes.append("no examples: every row was dropped, skipped or removed (see the counts)")
    return writer.files


def shared_signatures(table, decon: Optional[Decontaminator], dedup: Optional[Deduplicator]):
    """Query and positive MinHash signatures computed once for both decontamination and dedup."""
    if decon is None or dedup is None or table.num_rows == 0 or decon.hasher.num_perm != dedup.hasher.num_perm:
        return None
    return (dedup.hasher.text_signatures(table.column("query")), dedup.hasher.text_signatures(table.column("positive")))
