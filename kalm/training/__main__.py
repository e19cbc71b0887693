"""torchrun entry point: ``python -m torch.distributed.run ... -m kalm.training --config-json ... --data TOKENS``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kalm.store import atomic_write_json
from kalm.training.config import TrainConfig
from kalm.training.trainer import run_training


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m kalm.training")
    p.add_argument("--config-json", required=True)
    p.add_argument("--model-path", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data", required=True, help="token file written by kalm.training.data.prepare_training_data")
    args = p.parse_args()
    cfg = TrainConfig.model_validate(json.loads(args.config_json))
    summary = run_training(cfg, args.model_path, Path(args.data), Path(args.out))
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        atomic_write_json(Path(args.out) / "summary.json", summary)
    if dist.is_initialized():
        # Tear gloo/NCCL down together: a rank leaving while another still talks can abort it.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
