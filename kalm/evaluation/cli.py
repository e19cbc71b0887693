"""`kalm eval MODEL --tasks PATH_OR_NAMES --output DIR`: evaluation alone, no Prefect.

The caller prints ``json.dumps(summary)`` as the last stdout line; progress goes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from kalm.evaluation.run import evaluate_model


def eval_command(model: str, tasks: str, output: Path, batch_size: int = 64,
                 matryoshka_dim: Optional[int] = None, corpus_chunk_size: int = 50_000,
                 max_samples: Optional[int] = None) -> dict[str, Any]:
    """Score MODEL (a path, ``pkg:<module>`` or hub id) on PATH_OR_NAMES; mteb's files go under ``output``.

    Returns ``{"tasks": {"<task>": <main score>, ...}, "average": <x>}`` on mteb's 0-1 scale. How the
    model was loaded and what a task left out of its score (e.g. retrieval queries without a relevant
    document) go to stderr.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=100, desc="mteb", file=sys.stderr, disable=None)

    def progress(fraction: float, message: str = "") -> None:
        bar.n = round(fraction * 100)
        bar.set_postfix_str(message[:60], refresh=True)

    try:
        summary = evaluate_model(model, tasks, Path(output), batch_size=batch_size, matryoshka_dim=matryoshka_dim,
                                 progress=progress, corpus_chunk_size=corpus_chunk_size, max_samples=max_samples)
    finally:
        bar.close()
    # What a task left out of its score (or its subsample) is logged once per task as it is scored.
    print(f"model {model}: {summary['loader']}", file=sys.stderr)
    return {"tasks": summary["tasks"], "average": summary["average"]}
