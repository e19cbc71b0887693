"""The training loop: readable top to bottom, resumable, the same code on 1 or N processes.

    rows -> sampler (global batches) -> this rank's slice -> collate -> embed -> InfoNCE
    (gathered across ranks) -> AdamW + warmup -> metrics.csv / TensorBoard -> checkpoints
"""

from __future__ import annotations

import csv
import os
import random
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from kalm.stage import Progress, no_progress
from kalm.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from kalm.training.config import TrainConfig
from kalm.training.data import Collator, load_examples, task_key
from kalm.training.grad_cache import grad_cache_step
from kalm.training.loss import matryoshka_info_nce
from kalm.training.model import Embedder, load_tokenizer
from kalm.training.sampler import TaskBatchSampler, rank_slice

METRIC_FIELDS = ["step", "loss", "lr", "seconds", "tokens", "tokens_per_s", "examples"]


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed(cfg: TrainConfig) -> torch.device:
    """Join the torchrun process group when launched by torchrun; pick the device."""
    import torch.distributed as dist

    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        backend = cfg.distributed.backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_training(cfg: TrainConfig, model_path: str, inputs: Sequence[Path], out: Path,
                 progress: Optional[Progress] = None) -> dict[str, Any]:
    """Train (resuming from ``out/checkpoints`` when present) and export to ``out/model``."""
    progress = progress or no_progress
    out = Path(out)
    device = setup_distributed(cfg)
    rank, world = _dist_info()
    seed_everything(cfg.seed)

    rows = load_examples(inputs)
    tokenizer = load_tokenizer(model_path, cfg.pooling)
    embedder = Embedder(model_path, cfg, device).to(device)
    model: torch.nn.Module = embedder
    if world > 1:
        model = wrap_distributed(embedder, cfg, device)
    # Tokenize every text once into an Arrow table beside the checkpoints: rank 0 writes it,
    # the other ranks (and a resumed run) read it.
    if rank == 0:
        collate = Collator(tokenizer, cfg, rows, cache_dir=out / "tokens")
    _barrier()
    if rank != 0:
        collate = Collator(tokenizer, cfg, rows, cache_dir=out / "tokens")
    sampler = TaskBatchSampler([task_key(r) for r in rows], cfg.batch_size, cfg.sampler, cfg.homogeneous_share,
                               cfg.seed, lengths=collate.lengths() if cfg.group_by_length else None,
                               length_window=cfg.length_window)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps)

    ckpt_dir = out / "checkpoints"
    step = 0
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        step = load_checkpoint(last, embedder, optimizer, scheduler, sampler)
    metrics_path = out / "metrics.csv"
    _truncate_metrics(metrics_path, step, rank)
    writer = _tensorboard(out, rank)

    model.train()
    start, tokens_total = time.perf_counter(), 0
    losses: list[float] = []
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        batch = collate(rank_slice(sampler.next_batch(), rank, world), step)
        q = {k: v.to(device) for k, v in batch["query"].items()}
        d = {k: v.to(device) for k, v in batch["docs"].items()}
        in_batch, labels = batch["in_batch"].to(device), batch["labels"].to(device)

        def loss_fn(q_emb: torch.Tensor, d_emb: torch.Tensor) -> torch.Tensor:
            return matryoshka_info_nce(q_emb, d_emb, in_batch, cfg.num_hard_negatives, cfg.temperature,
                                       cfg.matryoshka_dims, cfg.matryoshka_weights,
                                       labels=labels if cfg.label_aware_negatives else None)

        optimizer.zero_grad(set_to_none=True)
        if cfg.grad_cache_chunk_size:
            loss = grad_cache_step(model, [q, d], loss_fn, cfg.grad_cache_chunk_size)
        else:
            loss = loss_fn(model(q["input_ids"], q["attention_mask"]), model(d["input_ids"], d["attention_mask"]))
            loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        tokens = int(q["attention_mask"].sum() + d["attention_mask"].sum()) * world
        tokens_total += tokens
        dt = time.perf_counter() - t0
        losses.append(float(loss.detach()))
        row = {"step": step, "loss": round(losses[-1], 6), "lr": scheduler.get_last_lr()[0],
               "seconds": round(dt, 3), "tokens": tokens, "tokens_per_s": round(tokens / dt, 1),
               "examples": cfg.batch_size}
        if rank == 0 and step % cfg.log_every == 0:
            _append_metrics(metrics_path, row)
            if writer is not None:
                for k in ("loss", "lr", "tokens_per_s"):
                    writer.add_scalar(f"train/{k}", row[k], step)
        eta = (cfg.max_steps - step) * (time.perf_counter() - start) / max(len(losses), 1)
        progress(step / cfg.max_steps, f"step {step}/{cfg.max_steps} loss {losses[-1]:.4f} "
                                       f"lr {row['lr']:.2e} {row['tokens_per_s']:.0f} tok/s ETA {eta:.0f}s")
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            if rank == 0:
                save_checkpoint(ckpt_dir, step, embedder, optimizer, scheduler, sampler)
            _barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        from kalm.training.export import export_sentence_transformer

        export_sentence_transformer(embedder, tokenizer, cfg, rows, out / "model")
    if writer is not None:
        writer.close()
    _barrier()
    return {"steps": step, "examples": len(rows), "tokens": tokens_total,
            "final_loss": losses[-1] if losses else float("nan"),
            "tokens_per_s": tokens_total / elapsed if elapsed > 0 and tokens_total else 0.0,
            "losses": losses}


def wrap_distributed(embedder: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    if cfg.distributed.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in getattr(embedder.model, "layers", []) or []:
            fully_shard(layer)
        fully_shard(embedder)
        return embedder
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(embedder, device_ids=[device.index] if device.type == "cuda" else None)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _truncate_metrics(path: Path, step: int, rank: int) -> None:
    """On resume, drop metric rows logged after the checkpoint (they are recomputed)."""
    if rank != 0 or not path.exists():
        return
    with open(path) as f:
        kept = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    from kalm.store import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        w.writeheader()
        w.writerows(kept)


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def _tensorboard(out: Path, rank: int):
    if rank != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional; metrics.csv always exists
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))
