"""The work pools fit the preset: the docker pool's container and the Kubernetes Job, rendered by
the real worker job configurations (prefect-docker, prefect-kubernetes) and checked by the libraries
that would send them (docker-py's HostConfig; the kubernetes client's batch/v1 models, which reject
unknown fields and wrong types), sized from ``python -m deployments.resources kalm-mini``; caches
on volumes; multi-node torchrun through the Indexed Job's hand-off, run for real with two local
"nodes" (gloo)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from deployments.resources import gpu_plan
from kalm.config import load_config

ROOT = Path(__file__).resolve().parent.parent
K8S_TEMPLATE = ROOT / "deployments" / "k8s-job-template.json"


def _pool_variables(name: str) -> dict:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"]: d["work_pool"] for d in spec["deployments"]}
    return pools[name].get("job_variables", {})


def _image_env(dockerfile: str) -> dict[str, str]:
    text = (ROOT / "docker" / dockerfile).read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def test_ray_shard_tasks_of_kalm_mini_ask_for_one_vllm_engines_gpus():
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_ray import RayTaskRunner

    from tasks.runners import SHARD_TASK, task_runner

    cfg = load_config("kalm-mini").generate
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # a server the workers reach
        runner = task_runner(cfg)
    assert isinstance(runner, RayTaskRunner)
    assert runner.task_options == {SHARD_TASK: {"num_gpus": 4}}  # tensor_parallel_size; Ray runs 8 / 4 = 2 at once
    assert runner.duplicate() == runner and runner != RayTaskRunner()


def _offline_client():
    """A Prefect client that is never contacted: rendering these templates must need nothing from a
    server (no block or variable references), so no API is started for it."""
    from prefect.client.orchestration import PrefectClient

    return PrefectClient(api="http://127.0.0.1:9/api")


def test_gpu_plan_of_the_presets():
    mini = gpu_plan(load_config("kalm-mini"))
    assert (mini.generate_gpus, mini.generate_gpus_per_task, mini.gpu_groups) == (8, 4, 2)  # vLLM 4 x 2
    assert (mini.train_gpus, mini.train_nodes, mini.container_gpus, mini.shm_size) == (8, 1, 8, "32g")
    demo = gpu_plan(load_config("cpu-demo"))
    assert demo.container_gpus == 0 and demo.gpu_groups == 1
    # Generation on a Ray cluster elsewhere takes no GPUs from the flow's container; training still does.
    remote = gpu_plan(load_config("kalm-mini", overrides={"generate.task_runner_address": "ray://head:10001"}))
    assert remote.generate_gpus == 0 and remote.container_gpus == 8


def test_docker_pool_gives_the_container_the_presets_gpus_shm_and_cache_volumes():
    import asyncio

    import docker
    from docker.models.containers import _create_container_args
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    plan = gpu_plan(load_config("kalm-mini"))
    variables = {**_pool_variables("kalm-gpu"), "image": "kalm-pipeline:gpu"}
    config = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(
        DockerWorker.get_default_base_job_template(), variables, client=_offline_client()))
    # What prefect-docker hands to docker-py's containers.create (DockerWorker._build_container_settings).
    kwargs = {"image": config.image, "volumes": config.volumes, "version": docker.constants.DEFAULT_DOCKER_API_VERSION,
              **{k: v for k, v in config.container_create_kwargs.items()
                 if k not in DockerWorkerJobConfiguration.model_fields}}
    host = _create_container_args(kwargs)["host_config"]
    (gpus,) = host["DeviceRequests"]
    assert gpus["Driver"] == "nvidia" and gpus["Count"] == plan.container_gpus == 8
    assert host["ShmSize"] == 32 * 1024 ** 3 and plan.shm_size == "32g"
    assert {u["Name"]: u["Hard"] for u in host["Ulimits"]}["memlock"] == -1

    image = _image_env("Dockerfile.gpu")
    mounts = dict(reversed(b.split(":")[:2]) for b in host["Binds"])
    # Every cache the pipeline keeps lives on a named volume: runs/, KALM_HOME (Prefect results =
    # the stage cache, embedding cache, converted models: KALM_CACHE) and the Hugging Face cache.
    assert image["KALM_CACHE"].startswith(image["KALM_HOME"] + "/")
    for path in ("/opt/kalm/runs", image["KALM_HOME"], image["HF_HOME"]):
        assert path in mounts and not mounts[path].startswith("/"), (path, mounts)  # a named volume
    assert image["KALM_ONLINE"] == "1"  # hub models load in the GPU image
    assert "KALM_ONLINE" not in _image_env("Dockerfile.cpu")  # offline stays the CPU default


def _render_k8s_job(variables: dict) -> dict:
    import asyncio

    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(K8S_TEMPLATE.read_text())
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, variables,
                                                                                   client=_offline_client()))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="weekly-retrain"))
    return config.job_manifest


def test_k8s_job_is_a_valid_indexed_batch_v1_job_sized_from_the_preset():
    from kubernetes.client import V1Job, V1Service

    plan = gpu_plan(load_config("kalm-mini", overrides={"train.distributed.nnodes": 2}))
    variables = {**_pool_variables("kalm-gpu-k8s"), "image": "kalm-pipeline:gpu", "nnodes": plan.train_nodes}
    manifest = _render_k8s_job(variables)
    # prefect-kubernetes (0.7.11, and 0.8.0) refuses a job template without parallelism: 1 and
    # completions: 1 in the *pod* spec (its validator diffs against a base manifest that has them
    # there); Kubernetes drops those unknown pod fields with a warning. The Job's spec runs the nodes.
    pod_extra = {k: manifest["spec"]["template"]["spec"].pop(k) for k in ("parallelism", "completions")}
    assert pod_extra == {"parallelism": 1, "completions": 1}
    job = V1Job.model_validate(manifest)  # strict models: unknown fields and wrong types raise
    assert job.kind == "Job" and job.api_version == "batch/v1"
    spec = job.spec
    assert (spec.completion_mode, spec.completions, spec.parallelism) == ("Indexed", 2, 2)
    pod = spec.template.spec
    (container,) = pod.containers
    assert container.resources.limits["nvidia.com/gpu"] == str(plan.train_gpus) == "8"
    assert container.resources.requests["nvidia.com/gpu"] == "8"
    assert [v.empty_dir.size_limit for v in pod.volumes if v.name == "dshm"] == ["32Gi"]

    # Pod 0 runs the flow run (the worker's command, as arguments of the node entry point).
    assert container.command == ["/opt/kalm/deployments/k8s-node.sh"] and (ROOT / "deployments/k8s-node.sh").exists()
    assert container.args[:3] == ["prefect", "flow-run", "execute"]
    env = [e.name for e in container.env]
    assert "PREFECT__FLOW_RUN_ID" in env  # the followers find the flow run's hand-off by it
    endpoint = next(e.value for e in container.env if e.name == "KALM_RDZV_ENDPOINT")
    assert env.index("KALM_JOB_NAME") < env.index("KALM_RDZV_ENDPOINT")  # $(VAR) needs the earlier definition
    service = V1Service.model_validate(json.loads((ROOT / "deployments" / "k8s-rendezvous-service.json").read_text()))
    assert endpoint == f"$(KALM_JOB_NAME)-0.{service.metadata.name}:29500" and pod.subdomain == service.metadata.name
    assert service.spec.cluster_ip == "None"  # headless: per-pod DNS names <job>-<index>.<service>
    assert service.spec.selector.items() <= spec.template.metadata.labels.items()

    # Caches on ReadWriteMany claims, mounted where the image keeps them.
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.volumes if v.persistent_volume_claim}
    image = _image_env("Dockerfile.gpu")
    assert {claims[mounts[p]] for p in ("/opt/kalm/runs", image["KALM_HOME"], image["HF_HOME"])} == \
        {"kalm-runs", "kalm-home", "kalm-hf-cache"}

    # Parallelism in the pod spec alone (the old template) is not a Job field: the models refuse it.
    bad = json.loads(json.dumps(manifest))
    bad["spec"]["template"]["spec"]["parallelism"] = 2
    with pytest.raises(ValueError, match="spec.template.spec.parallelism"):
        V1Job.model_validate(bad)


def test_node_entry_point_runs_the_flow_on_pod_0_only(tmp_path):
    script = ROOT / "deployments" / "k8s-node.sh"
    flow = subprocess.run([str(script), sys.executable, "-c", "print('flow run')"], capture_output=True, text=True,
                          env={**os.environ, "JOB_COMPLETION_INDEX": "0"}, timeout=60)
    assert flow.returncode == 0 and flow.stdout.strip() == "flow run"
    follower = subprocess.run([str(script), sys.executable, "-c", "print('flow run')"], capture_output=True,
                              text=True, cwd=ROOT, timeout=120,
                              env={**os.environ, "JOB_COMPLETION_INDEX": "1", "PATH": f"{Path(sys.executable).parent}:"
                                   f"{os.environ['PATH']}"} | {"PREFECT__FLOW_RUN_ID": ""})
    assert follower.returncode == 2 and "PREFECT__FLOW_RUN_ID is not set" in follower.stderr  # it ran the follower


def test_follower_is_released_when_the_flow_run_ends_without_multinode_training(tmp_path, monkeypatch):
    """A flow run whose train stage came from the cache never publishes a command: the follower
    pods read the flow run's final state from Prefect's API and exit 0 (the Job completes)."""
    from prefect import flow

    from deployments.torchrun_node import follow

    @flow(name="no-training")
    def no_training() -> str:
        from prefect.runtime import flow_run

        return flow_run.id

    flow_run_id = no_training()
    monkeypatch.setenv("KALM_TORCHRUN_HANDOFF_DIR", str(tmp_path))
    assert follow(flow_run_id, poll_s=0.1, timeout_s=120) == 0
    with pytest.raises(TimeoutError, match="shared by every pod"):  # a running flow run never releases it
        follow(flow_run_id, poll_s=0.05, timeout_s=0.2, finished=lambda _: False)


ALL_REDUCE = """
import json, os, sys
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
out = os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json")
json.dump({"sum": t.item(), "world": dist.get_world_size(), "node": int(os.environ["GROUP_RANK"])}, open(out, "w"))
dist.barrier()  # tear down together (a rank leaving mid-collective can abort the other)
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_follower_node_joins_node_0s_torchrun_through_the_handoff(tmp_path):
    """Two "nodes" on this machine: node 0 publishes its torchrun command (as the train stage does on
    pod 0) and starts it; node 1 runs ``deployments.torchrun_node follow`` (as pods 1.. do), finds the
    command under KALM_HOME and joins through torchrun's c10d rendezvous; both ranks all-reduce."""
    from deployments.torchrun_node import handoff_path, publish

    script = tmp_path / "all_reduce.py"
    script.write_text(ALL_REDUCE)
    out = tmp_path / "out"
    out.mkdir()
    flow_run_id = str(uuid.uuid4())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{_free_port()}", f"--rdzv-id={flow_run_id}", str(script), str(out)]
    env = {**os.environ, "KALM_TORCHRUN_HANDOFF_DIR": str(tmp_path / "handoff"), "PREFECT__FLOW_RUN_ID": flow_run_id}
    os.environ["KALM_TORCHRUN_HANDOFF_DIR"] = env["KALM_TORCHRUN_HANDOFF_DIR"]
    try:
        path = publish(cmd, flow_run_id)
        assert path == handoff_path(flow_run_id) and path.parent == tmp_path / "handoff"
    finally:
        del os.environ["KALM_TORCHRUN_HANDOFF_DIR"]
    node0 = subprocess.Popen(cmd, env=env, cwd=ROOT)
    node1 = subprocess.run([sys.executable, "-m", "deployments.torchrun_node", "follow"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert node0.wait(timeout=300) == 0
    assert node1.returncode == 0, node1.stdout[-2000:] + node1.stderr[-3000:]
    assert "joining" in node1.stdout
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["sum"] for r in ranks] == [3.0, 3.0] and {r["world"] for r in ranks} == {2}
    assert sorted(r["node"] for r in ranks) == [0, 1]  # one rank on each node


def test_train_stage_hands_its_torchrun_command_to_the_other_nodes_before_launching(tmp_path, monkeypatch):
    """On pod 0 of the Indexed Job the train stage publishes the exact torchrun command (rendezvous
    at the job's ``KALM_RDZV_ENDPOINT``) before starting torchrun, so the followers can join it."""
    import tasks.train  # noqa: F401  (registers the hand-off)
    from deployments.torchrun_node import handoff_path
    from kalm.training import launch
    from kalm.training.config import TrainConfig

    monkeypatch.setenv("KALM_TORCHRUN_HANDOFF_DIR", str(tmp_path / "handoff"))
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "flow-run-1")
    monkeypatch.setenv("KALM_RDZV_ENDPOINT", "kalm-job-0.kalm-rdzv:29500")

    class Launched(Exception):
        pass

    def instead_of_torchrun(cmd):  # the hooks ran; stop before a rendezvous that no second node joins
        raise Launched

    monkeypatch.setattr(launch, "BEFORE_MULTI_NODE_LAUNCH", [*launch.BEFORE_MULTI_NODE_LAUNCH, instead_of_torchrun])
    cfg = TrainConfig.model_validate({"distributed": {"nnodes": 2, "nproc_per_node": 1}})
    with pytest.raises(Launched):
        launch.launch(cfg, "model", tmp_path / "tokens", tmp_path / "out")
    cmd = json.loads(handoff_path("flow-run-1").read_text())["cmd"]
    assert "--nnodes=2" in cmd and "--rdzv-endpoint=kalm-job-0.kalm-rdzv:29500" in cmd
    assert cmd[cmd.index("--model-path") + 1] == "model"

    monkeypatch.delenv("KALM_RDZV_ENDPOINT")
    with pytest.raises(ValueError, match="KALM_RDZV_ENDPOINT"):
        launch.torchrun_command(cfg, "model", tmp_path / "tokens", tmp_path / "out")
