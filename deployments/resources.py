"""How many GPUs a preset needs: per stage, per flow-run container, and in how many GPU groups.

The work pools in prefect.yaml and ``deployments/setup.sh`` are sized from this (tests check that
they agree with ``kalm-mini``), so a flow run never starts in a container that cannot hold its
stages: vLLM raises "World size (4) is larger than the number of available GPUs (1)" and torchrun
ranks fail ``set_device`` when the container has fewer GPUs than the preset asks for.

    python -m deployments.resources kalm-mini      # JSON, e.g. {"container_gpus": 8, ...}

Sources: vLLM runs one engine over ``tensor_parallel_size`` GPUs and ``data_parallel_size``
engines side by side (generate.vllm); torchrun starts ``nproc_per_node`` ranks per node, one GPU
each with the nccl backend (train.distributed); the filter's teacher and mteb's evaluation encode
on one GPU (faiss-gpu shards its index over every visible GPU, so it uses what the container has).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

# /dev/shm per GPU for NCCL's shared-memory transport and DataLoader workers (Docker's default
# of 64 MB makes NCCL fail with "unhandled system error" on more than one GPU).
SHM_PER_GPU_GB = 4


@dataclass(frozen=True)
class GpuPlan:
    """GPUs a preset needs. ``*_gpus`` count devices in the flow-run container (one node)."""

    generate_gpus: int  # in the flow-run container; 0 when a Ray/Dask cluster elsewhere generates
    generate_gpus_per_task: int  # one vLLM engine: tensor_parallel_size
    gpu_groups: int  # generate-shard tasks that hold GPUs at once (vLLM data_parallel_size)
    filter_gpus: int
    train_gpus: int  # per node
    train_nodes: int
    evaluate_gpus: int

    @property
    def container_gpus(self) -> int:
        """GPUs one flow-run container (one node) must expose: the largest stage."""
        return max(self.generate_gpus, self.filter_gpus, self.train_gpus, self.evaluate_gpus)

    @property
    def shm_size(self) -> str:
        return f"{max(1, self.container_gpus) * SHM_PER_GPU_GB}g" if self.container_gpus else "1g"

    def as_dict(self) -> dict:
        return {**asdict(self), "container_gpus": self.container_gpus, "shm_size": self.shm_size}


def gpu_plan(cfg) -> GpuPlan:
    """The :class:`GpuPlan` of a loaded run config (``kalm.config.load_config``)."""
    g, d = cfg.generate, cfg.train.distributed
    per_task, groups, local = 0, 1, 0
    if g.enabled and g.backend == "vllm":
        per_task, groups = g.vllm.tensor_parallel_size, g.vllm.data_parallel_size
        remote = g.task_runner in ("dask", "ray") and g.task_runner_address
        local = 0 if remote else per_task * groups
    # The teacher and mteb models run on a GPU when the config is a GPU config (nccl training or vLLM).
    gpu_config = d.backend == "nccl" or per_task > 0
    return GpuPlan(generate_gpus=local, generate_gpus_per_task=per_task, gpu_groups=groups,
                   filter_gpus=1 if gpu_config and cfg.filter.index.use_gpu != "never" else 0,
                   train_gpus=d.nproc_per_node if d.backend == "nccl" else 0, train_nodes=d.nnodes,
                   evaluate_gpus=1 if gpu_config else 0)


def main(argv: list[str]) -> int:
    from kalm.config import load_config

    if len(argv) != 1:
        print("usage: python -m deployments.resources PRESET_OR_PATH", file=sys.stderr)
        return 2
    print(json.dumps(gpu_plan(load_config(argv[0])).as_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
