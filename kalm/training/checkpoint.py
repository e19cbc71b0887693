"""Atomic training checkpoints: model, optimizer, scheduler, sampler state and RNG."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from kalm.store import atomic_path, atomic_write_text


def save_checkpoint(ckpt_dir: Path, step: int, model: torch.nn.Module, optimizer, scheduler, sampler) -> Path:
    path = Path(ckpt_dir) / f"step-{step:07d}"
    state = {
        "step": step,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
    }
    with atomic_path(path) as tmp:
        tmp.mkdir()
        torch.save(state, tmp / "state.pt")
    # "latest" is written after the folder is complete: a crash in between leaves the previous one.
    atomic_write_text(Path(ckpt_dir) / "latest", path.name)
    return path


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    pointer = Path(ckpt_dir) / "latest"
    if not pointer.exists():
        return None
    path = Path(ckpt_dir) / pointer.read_text().strip()
    return path if (path / "state.pt").exists() else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, sampler) -> int:
    state: dict[str, Any] = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    return int(state["step"])
