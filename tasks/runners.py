"""Task runners for the generate subflow, and what one shard task asks of a cluster scheduler.

``generate.task_runner`` picks Prefect's own runners (``sequential``/``threads``/``processes``) or a
cluster engine through Prefect's integrations: ``dask`` (prefect-dask, a ``distributed`` scheduler
at ``task_runner_address`` or a ``LocalCluster``) and ``ray`` (prefect-ray, a Ray cluster at
``task_runner_address`` or a local instance). Both come with ``pip install 'kalm-pipeline[cluster]'``.

On Ray each ``generate-shard`` task declares the GPUs its backend needs (``num_gpus``, Ray's own
resource accounting): a vLLM engine spans ``generate.vllm.tensor_parallel_size`` GPUs, so Ray
runs at most (cluster GPUs / tensor_parallel_size) shards at once and hands each the GPUs in
``CUDA_VISIBLE_DEVICES``; further shards wait in Ray's queue instead of failing on a busy GPU.
"""

from __future__ import annotations

from typing import Any, Optional

from kalm.synth.config import GenerateConfig

SHARD_TASK = "generate-shard"


def shard_resources(cfg: GenerateConfig) -> dict[str, float]:
    """Ray ``remote`` options for one shard task: ``{"num_gpus": tensor_parallel_size}`` for vLLM.

    The transformers backend (the CPU default) and the HTTP backend (the model runs behind a
    server) ask for no GPUs; Ray's default of one CPU per task applies to every backend.
    """
    if cfg.backend == "vllm":
        return {"num_gpus": cfg.vllm.tensor_parallel_size}
    return {}


def _needs(package: str, runner: str) -> RuntimeError:
    return RuntimeError(f"generate.task_runner '{runner}' needs {package}: pip install 'kalm-pipeline[cluster]' "
                        f"(or the locked set: pip install -r requirements.lock)")


def ray_task_runner(address: Optional[str] = None, task_options: Optional[dict[str, dict[str, Any]]] = None,
                    init_kwargs: Optional[dict[str, Any]] = None):
    """prefect-ray's ``RayTaskRunner`` that submits the tasks named in ``task_options`` with those
    Ray remote options (``num_gpus``, ``num_cpus``, ``resources``, ...), through prefect-ray's own
    ``remote_options`` context, so the flow's code stays the same for every runner.

    Raises:
        RuntimeError: prefect-ray is not installed.
    """
    try:
        from prefect_ray import RayTaskRunner
        from prefect_ray.context import remote_options
    except ImportError as e:
        raise _needs("prefect-ray", "ray") from e

    class ResourceRayTaskRunner(RayTaskRunner):
        def __init__(self, address=None, init_kwargs=None, task_options=None):
            super().__init__(address=address, init_kwargs=init_kwargs)
            self.task_options = {k: dict(v) for k, v in (task_options or {}).items()}

        def duplicate(self):
            return type(self)(address=self.address, init_kwargs=self.init_kwargs, task_options=self.task_options)

        def __eq__(self, other: object) -> bool:
            return super().__eq__(other) and getattr(other, "task_options", None) == self.task_options

        __hash__ = None  # mutable, compared by value like its parent

        def submit(self, task, parameters, wait_for=None, dependencies=None):
            options = self.task_options.get(task.name)
            if not options:
                return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
            with remote_options(**options):
                return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)

    return ResourceRayTaskRunner(address=address, init_kwargs=init_kwargs, task_options=task_options)


def _require_api_server(runner: str) -> None:
    """Cluster workers report task runs to the flow's Prefect API: without ``PREFECT_API_URL`` each
    worker process would start its own temporary server (on a remote node, with a database the
    flow never sees), so the run would hang or time out far from its cause."""
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise RuntimeError(f"generate.task_runner '{runner}' needs a Prefect server that the cluster's workers reach: "
                           "set PREFECT_API_URL (e.g. http://<host>:4200/api from `kalm ui` or `prefect server "
                           "start`); a deployment's worker sets it for its flow runs")


def task_runner(cfg: GenerateConfig):
    """The Prefect task runner named by ``cfg.task_runner``.

    Raises:
        RuntimeError: ``dask``/``ray`` without prefect-dask/prefect-ray installed, or without a
            Prefect API server (``PREFECT_API_URL``) for the cluster's workers to report to.
    """
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    if cfg.task_runner in ("dask", "ray"):
        _require_api_server(cfg.task_runner)
    if cfg.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as e:
            raise _needs("prefect-dask", "dask") from e
        if cfg.task_runner_address:
            return DaskTaskRunner(address=cfg.task_runner_address)
        # A LocalCluster of max_workers single-threaded processes: one model per process, as on Ray.
        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.max_workers, "threads_per_worker": 1})
    if cfg.task_runner == "ray":
        resources = shard_resources(cfg)
        return ray_task_runner(cfg.task_runner_address, {SHARD_TASK: resources} if resources else None)
    if cfg.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=cfg.max_workers)
    return ThreadPoolTaskRunner(max_workers=1 if cfg.task_runner == "sequential" else cfg.max_workers)
