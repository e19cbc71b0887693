"""The training loop: readable top to bottom, resumable, the same code on 1 or N processes.

    token file (memory-mapped) -> sampler (global batches) -> this rank's slice -> collate
    -> embed (bf16 autocast / FSDP2 mixed precision) -> InfoNCE over the gathered global batch
    (duplicates masked) -> clip -> AdamW + warmup -> metrics.csv / TensorBoard -> DCP checkpoints
    -> export (full state dict gathered, rank 0 writes the sentence-transformers folder)

The structure follows torchtitan's train loop: build, wrap (DDP, or FSDP2 ``fully_shard`` per
transformer block), restore, loop, save.
"""

from __future__ import annotations

import csv
import datetime
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from kalm.stage import Progress, no_progress
from kalm.training.checkpoint import latest_checkpoint, load_checkpoint, run_key, save_checkpoint
from kalm.training.config import TrainConfig, matryoshka_problems
from kalm.training.data import Collator, TrainingData
from kalm.training.grad_cache import grad_cache_step
from kalm.training.loss import matryoshka_info_nce
from kalm.training.model import Embedder, freeze_unused, load_tokenizer
from kalm.training.sampler import TaskBatchSampler, rank_slice

METRIC_FIELDS = ["step", "loss", "lr", "grad_norm", "seconds", "tokens", "tokens_per_s", "examples"]
_BLOCK_NAMES = ("layers", "layer", "h", "blocks")  # the ModuleList of transformer blocks in HF models


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
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=cfg.distributed.timeout_s))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_training(cfg: TrainConfig, model_path: str, data_path: Path, out: Path,
                 progress: Optional[Progress] = None) -> dict[str, Any]:
    """Train on the token file ``data_path`` (see :func:`kalm.training.data.prepare_training_data`),
    resuming from this configuration's checkpoints under ``out/checkpoints``, and export to ``out/model``.

    Returns rank 0's summary: ``steps`` (of the model), ``steps_trained`` (by this call),
    ``resumed_from``, ``examples``, ``tokens`` (non-padding, this call), ``final_loss``,
    ``tokens_per_s``, ``losses`` (this call's), ``run_key``.
    """
    progress = progress or no_progress
    out = Path(out)
    device = setup_distributed(cfg)
    rank, world = _dist_info()
    seed_everything(cfg.seed)

    data = TrainingData(data_path)
    tokenizer = load_tokenizer(model_path, cfg.pooling)
    embedder = Embedder(model_path, cfg, device).to(device)
    problems = matryoshka_problems(cfg.matryoshka_dims, None, embedder.dim, cfg.student)
    if problems:
        raise ValueError("; ".join(problems))
    freeze_unused(embedder, device)
    model = wrap_distributed(embedder, cfg, device) if world > 1 else embedder
    collate = Collator(data, cfg, pad_id=tokenizer.pad_token_id)
    tasks, _ = data.task_ids()
    sampler = TaskBatchSampler(tasks, cfg.batch_size, cfg.sampler, cfg.homogeneous_share, cfg.seed,
                               lengths=data.lengths() if cfg.group_by_length else None,
                               length_window=cfg.length_window)
    params = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = build_optimizer(embedder, cfg)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps)

    key = run_key(cfg, data_path)
    ckpt_dir = out / "checkpoints" / key
    if rank == 0:
        from kalm.store import atomic_write_json

        ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(ckpt_dir / "train_config.json", {"train": cfg.model_dump(mode="json"),
                                                           "data": str(data_path)})
    step = 0
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        step = load_checkpoint(last, embedder, optimizer, scheduler, sampler)
    start_step = step
    metrics_path = ckpt_dir / "metrics.csv"
    _truncate_metrics(metrics_path, step, rank)
    writer = _tensorboard(ckpt_dir, rank)

    model.train()
    start, tokens_total = time.perf_counter(), 0
    losses: list[float] = []
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        batch = collate(rank_slice(sampler.next_batch(), rank, world), step)
        q = {k: v.to(device) for k, v in batch["query"].items()}
        d = {k: v.to(device) for k, v in batch["docs"].items()}
        extra = {k: batch[k].to(device) for k in ("in_batch", "labels", "q_hash", "d_hash", "symmetric")}

        def loss_fn(q_emb: torch.Tensor, d_emb: torch.Tensor) -> torch.Tensor:
            return matryoshka_info_nce(q_emb, d_emb, extra["in_batch"], cfg.num_hard_negatives, cfg.temperature,
                                       cfg.matryoshka_dims, cfg.matryoshka_weights,
                                       labels=extra["labels"] if cfg.label_aware_negatives else None,
                                       q_hash=extra["q_hash"], d_hash=extra["d_hash"], symmetric=extra["symmetric"])

        lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
        optimizer.zero_grad(set_to_none=True)
        if cfg.grad_cache_chunk_size:
            loss = grad_cache_step(model, [q, d], loss_fn, cfg.grad_cache_chunk_size)
        else:
            loss = loss_fn(model(q["input_ids"], q["attention_mask"]), model(d["input_ids"], d["attention_mask"]))
            loss.backward()
        grad_norm = clip_gradients(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        tokens = _global_sum(int(q["attention_mask"].sum() + d["attention_mask"].sum()), device)
        tokens_total += tokens
        dt = time.perf_counter() - t0
        losses.append(float(loss.detach()))
        row = {"step": step, "loss": round(losses[-1], 6), "lr": lr, "grad_norm": round(grad_norm, 6),
               "seconds": round(dt, 3), "tokens": tokens, "tokens_per_s": round(tokens / dt, 1),
               "examples": cfg.batch_size}
        if rank == 0 and step % cfg.log_every == 0:
            _append_metrics(metrics_path, row)
            if writer is not None:
                for k in ("loss", "lr", "grad_norm", "tokens_per_s"):
                    writer.add_scalar(f"train/{k}", row[k], step)
        eta = (cfg.max_steps - step) * (time.perf_counter() - start) / max(len(losses), 1)
        progress(step / cfg.max_steps, f"step {step}/{cfg.max_steps} loss {losses[-1]:.4f} "
                                       f"lr {lr:.2e} {row['tokens_per_s']:.0f} tok/s ETA {eta:.0f}s")
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            save_checkpoint(ckpt_dir, step, embedder, optimizer, scheduler, sampler, cfg.keep_checkpoints)
    elapsed = time.perf_counter() - start
    if writer is not None:
        writer.close()
    export_model(embedder, cfg, model_path, tokenizer, data.instructions(), out / "model", key, device)
    if rank == 0:
        from kalm.store import atomic_path

        with atomic_path(out / "metrics.csv") as tmp:  # this configuration's whole log, for the stage's outputs
            shutil.copyfile(metrics_path, tmp)
    logged = _read_losses(metrics_path) if rank == 0 else {}
    return {"steps": step, "steps_trained": step - start_step, "resumed_from": start_step, "examples": len(data),
            "tokens": tokens_total, "final_loss": losses[-1] if losses else logged.get(step, float("nan")),
            "tokens_per_s": tokens_total / elapsed if elapsed > 0 and tokens_total else 0.0, "losses": losses,
            "run_key": key}


def build_optimizer(embedder: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only: biases and norm weights (1-d) are not decayed."""
    decay, no_decay = [], []
    for p in embedder.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate)


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Total gradient norm before clipping; clips to ``max_norm`` when > 0 (DTensor grads under FSDP2 too)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads)
    from torch.distributed.tensor import DTensor

    if isinstance(norm, DTensor):  # FSDP2: each rank holds a shard's partial norm
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)


def wrap_distributed(embedder: Embedder, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """DDP, or FSDP2 ``fully_shard`` on every transformer block and then the whole embedder.

    FSDP2 mixed precision: bf16 parameters in the forward/backward, gradients reduced in fp32,
    fp32 sharded master weights and optimizer state (autocast is then off)."""
    if cfg.distributed.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        import torch.distributed as dist

        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        mp = MixedPrecisionPolicy(param_dtype=embedder.autocast_dtype, reduce_dtype=torch.float32) \
            if embedder.autocast_dtype is not None else MixedPrecisionPolicy()
        embedder.autocast_dtype = None
        for block in transformer_blocks(embedder):
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(embedder, mesh=mesh, mp_policy=mp)
        return embedder
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(embedder, device_ids=[device.index] if device.type == "cuda" else None)


def transformer_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (``layers``, ``layer``, ``h`` or ``blocks`` ModuleList)."""
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in _BLOCK_NAMES and len(m) > 0:
            return list(m)
    return []


def export_model(embedder: Embedder, cfg: TrainConfig, model_path: str, tokenizer, instructions: dict[str, str],
                 out: Path, key: str, device: torch.device) -> None:
    """Write the sentence-transformers folder (collective under FSDP2: the full state dict is gathered)."""
    from kalm.training.export import export_sentence_transformer

    rank, world = _dist_info()
    source = embedder
    if world > 1 and cfg.distributed.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(embedder, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            source = Embedder(model_path, cfg, torch.device("cpu"))
            source.load_state_dict(full)
    if rank == 0:
        export_sentence_transformer(source, tokenizer, cfg, instructions, out, run_key=key)
    _barrier()


def _global_sum(value: int, device: torch.device) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], device=device, dtype=torch.long)
    dist.all_reduce(t)
    return int(t.item())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _read_losses(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    with open(path) as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def _truncate_metrics(path: Path, step: int, rank: int) -> None:
    """On resume, drop metric rows logged after the checkpoint (they are recomputed)."""
    if rank != 0 or not path.exists():
        return
    with open(path) as f:  # a killed run may have left a partial last row: it is dropped with the others
        kept = [r for r in csv.DictReader(f)
                if None not in r.values() and r["step"].isdigit() and int(r["step"]) <= step]
    from kalm.store import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
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


def _tensorboard(folder: Path, rank: int):
    if rank != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional; metrics.csv always exists
        return None
    return SummaryWriter(log_dir=str(folder / "tensorboard"))
