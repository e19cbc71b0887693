"""The ingest stage: every configured open dataset -> one Parquet file in the example schema."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from kalm.ingest.config import IngestConfig
from kalm.ingest.mapping import MAPPERS
from kalm.ingest.readers import read_rows
from kalm.schema import write_examples
from kalm.stage import Progress, StageResult, no_progress
from kalm.store import atomic_write_json, hash_outputs


def run_ingest(cfg: IngestConfig, out: Path, progress: Progress | None = None) -> StageResult:
    progress = progress or no_progress
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    outputs, counts, per_source = [], Counter(), {}
    for i, src in enumerate(cfg.datasets):
        progress(i / max(len(cfg.datasets), 1), f"reading {src.name}")
        rows = read_rows(src)
        rng = random.Random(src.seed)
        examples = MAPPERS[src.format](src, rows, rng)
        # Exact duplicates (same id = same source, task, query, positive) are kept once.
        examples = list({ex.id: ex for ex in examples}.values())
        if src.max_rows is not None and len(examples) > src.max_rows:
            examples = random.Random(src.seed).sample(examples, src.max_rows)
        path = write_examples(examples, out / f"{src.name}.parquet")
        outputs.append(path)
        per_source[src.name] = {
            "rows_read": len(rows), "examples": len(examples), "in_domain": src.in_domain,
            "task_types": dict(Counter(ex.task_type for ex in examples)),
        }
        counts["rows_read"] += len(rows)
        counts["examples"] += len(examples)
    stats = out / "stats.json"
    atomic_write_json(stats, per_source)
    progress(1.0, "done")
    return StageResult(
        stage="ingest", out_dir=out, outputs=outputs + [stats], hashes=hash_outputs(out, outputs),
        counts=dict(counts), seconds=time.perf_counter() - start,
        info={"per_source": per_source, "in_domain_sources": [s.name for s in cfg.datasets if s.in_domain]},
    )
