"""The train stage: check the config against the student, tokenize once, train (in-process or
under torchrun), export."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

from kalm.stage import Progress, StageResult, no_progress
from kalm.store import hash_outputs
from kalm.training.config import TrainConfig, matryoshka_problems, student_embedding_size


def train(cfg: TrainConfig, inputs: Sequence[Path], out: Path, progress: Optional[Progress] = None,
          eval_matryoshka_dim: Optional[int] = None) -> StageResult:
    """Train ``cfg.student`` on the example files; one process runs in-process, more under torchrun.

    Before any work: the Matryoshka sizes are checked against the student's embedding size
    (``ValueError`` naming ``train.matryoshka_dims``, the sizes and the student's size). The
    examples are tokenized once here (:func:`kalm.training.data.prepare_training_data`,
    cached by content under ``out/tokens``), before torchrun starts its processes.

    A run whose configuration already finished (its final checkpoint exists) trains 0 steps and
    exports that checkpoint again: its result says so (``info['reused_final_checkpoint']``).
    """
    from kalm.models import transformers_path
    from kalm.training.data import prepare_training_data

    progress = progress or no_progress
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = student_embedding_size(cfg.student)
    if size is not None:
        problems = matryoshka_problems(cfg.matryoshka_dims, eval_matryoshka_dim, size, cfg.student)
        if problems:
            raise ValueError("; ".join(problems))
    model_path = transformers_path(cfg.student)
    t0 = time.perf_counter()
    data = prepare_training_data(cfg, inputs, out / "tokens", model_path=model_path,
                                 progress=lambda f, m: progress(0.0, m))
    tokenize_s = time.perf_counter() - t0
    _check_enough_examples(cfg, data, inputs)
    d = cfg.distributed
    if d.nproc_per_node * d.nnodes > 1:
        from kalm.training.launch import launch

        summary = launch(cfg, model_path, data, out)
    else:
        from kalm.training.trainer import run_training

        summary = run_training(cfg, model_path, data, out, progress)
    model_dir = out / "model"
    outputs = [model_dir, out / "metrics.csv"]
    reused = summary["steps_trained"] == 0
    return StageResult(
        stage="train", out_dir=out, outputs=outputs, hashes=hash_outputs(out, [model_dir]),
        counts={"steps": summary["steps"], "steps_trained": summary["steps_trained"],
                "resumed_from": summary["resumed_from"], "examples": summary["examples"], "tokens": summary["tokens"]},
        metrics={"final_loss": summary["final_loss"], "tokens_per_s": summary["tokens_per_s"],
                 "tokenize_seconds": round(tokenize_s, 2)},
        seconds=time.perf_counter() - start,
        info={"base_model": cfg.student, "losses": summary["losses"], "run_key": summary["run_key"],
              "token_file": str(data), "reused_final_checkpoint": reused},
    )


def _check_enough_examples(cfg: TrainConfig, token_file: Path, inputs: Sequence[Path]) -> None:
    """Fail before launching any process when the kept examples cannot fill one batch: a fault in
    the data (everything was dropped upstream, or the dataset is tiny), so a ``DataError`` that the
    orchestration layer does not retry."""
    from kalm.errors import DataError
    from kalm.training.data import TrainingData

    n = len(TrainingData(token_file))
    if n < cfg.batch_size:
        names = ", ".join(Path(p).name for p in inputs) or "(no files)"
        raise DataError(f"train: {n} examples left after ingest and filter ({names}) are fewer than one batch of "
                        f"train.batch_size {cfg.batch_size}; lower train.batch_size to at most {n}, or add data "
                        "(the ingest and filter stats say how many rows were dropped and why)")
