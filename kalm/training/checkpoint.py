"""Training checkpoints: written by every rank with torch.distributed.checkpoint (DCP), atomic,
kept apart by training configuration.

Layout, under the train stage's folder::

    checkpoints/<run key>/train_config.json     the config that owns these checkpoints
    checkpoints/<run key>/metrics.csv           its per-step log
    checkpoints/<run key>/step-0000500/         DCP files (model + optimizer, each rank its shards)
                                     extra-rank00000.pt ...   scheduler, sampler, RNG of each rank
                                     meta.json                step, world size
    checkpoints/<run key>/latest                name of the newest complete checkpoint

The run key hashes the train config (minus settings that do not change what is computed:
checkpoint/log cadence, ``keep_checkpoints``, ``distributed``, and the memory knobs
``gradient_checkpointing`` and ``grad_cache_chunk_size``, which give the same gradients) and
the token file (the inputs' content). A checkpoint is therefore resumed only by the
configuration that wrote it; a changed learning rate or step count starts afresh beside it.

Model and optimizer states come from ``torch.distributed.checkpoint.state_dict.get_state_dict``:
under FSDP2 each rank saves and loads its own shards (no gather), under DDP the replicated
tensors are written once. A checkpoint is written into ``.step-N.tmp`` and renamed into place
by rank 0 after every rank finished (a killed run leaves the previous one); it resumes on the
same world size only (the RNG and the shards are per rank). With several nodes, ``out`` must
be on a file system every node sees.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from kalm.store import atomic_write_json, atomic_write_text, hash_strings
from kalm.training.config import TrainConfig

# Settings that do not change the computed trajectory: changing them resumes the same checkpoints.
NOT_IN_KEY = {"checkpoint_every", "log_every", "keep_checkpoints", "distributed", "gradient_checkpointing",
              "grad_cache_chunk_size"}


def run_key(cfg: TrainConfig, data_path: Path) -> str:
    """Hash of what a training run computes: its config (see ``NOT_IN_KEY``) and its token file."""
    fields = cfg.model_dump(mode="json", exclude=NOT_IN_KEY)
    return hash_strings([json.dumps(fields, sort_keys=True), Path(data_path).name])[:16]




@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """One process without a process group is a supported DCP mode; its warning says only that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(ckpt_dir: Path, step: int, model: torch.nn.Module, optimizer, scheduler, sampler,
                    keep: int) -> Path:
    """Write checkpoint ``step`` (collective: every rank calls it), then keep the newest ``keep``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, world = _dist()
    ckpt_dir = Path(ckpt_dir)
    final, tmp = ckpt_dir / f"step-{step:07d}", ckpt_dir / f".step-{step:07d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial write of a killed run
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet():
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp))
    torch.save({"scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(), "rng": _rng_state()},
               tmp / f"extra-rank{rank:05d}.pt")
    _barrier()
    if rank == 0:
        atomic_write_json(tmp / "meta.json", {"step": step, "world_size": world})
        if final.exists():  # written before by a run killed between this rename and 'latest'
            shutil.rmtree(final)
        os.replace(tmp, final)
        # 'latest' moves only once the folder is complete: a crash in between leaves the previous one.
        atomic_write_text(ckpt_dir / "latest", final.name)
        prune_checkpoints(ckpt_dir, keep)
    _barrier()
    return final


def prune_checkpoints(ckpt_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints of one run key; returns the deleted ones."""
    done = sorted(p for p in Path(ckpt_dir).glob("step-*") if (p / "meta.json").exists())
    old = done[:-keep] if keep > 0 else []
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    pointer = Path(ckpt_dir) / "latest"
    if not pointer.exists():
        return None
    path = Path(ckpt_dir) / pointer.read_text().strip()
    return path if (path / "meta.json").exists() else None


def checkpoint_step(path: Path) -> int:
    return int(json.loads((Path(path) / "meta.json").read_text())["step"])


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, sampler) -> int:
    """Restore every rank's state from ``path`` (collective); returns its step.

    Raises:
        RuntimeError: the checkpoint was written by a different number of processes.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    rank, world = _dist()
    meta = json.loads((Path(path) / "meta.json").read_text())
    if meta["world_size"] != world:
        raise RuntimeError(
            f"checkpoint {path} was written by {meta['world_size']} processes, this run has {world}: resume with "
            f"train.distributed nproc_per_node * nnodes = {meta['world_size']}, or delete {Path(path).parent} "
            "to train this configuration from the start")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    with _quiet():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    extra = torch.load(Path(path) / f"extra-rank{rank:05d}.pt", map_location="cpu", weights_only=False)
    scheduler.load_state_dict(extra["scheduler"])
    sampler.load_state_dict(extra["sampler"])
    _set_rng_state(extra["rng"])
    return int(meta["step"])


def load_model_weights(path: Path, model: torch.nn.Module) -> None:
    """Load only the model weights of checkpoint ``path`` into an unwrapped ``model`` (one process)."""
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    with _quiet():
        dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
