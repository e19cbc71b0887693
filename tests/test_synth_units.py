"""Fast checks of the generate stage's parts: personas, sharding, GPU claims for vLLM data
parallelism, the task runner choice, the disabled stage, and the vLLM backend where installed."""

from __future__ import annotations

import json

import pytest

from kalm.synth.config import GenerateConfig, PersonaSource, VLLMOptions


def test_personas_from_file_are_deduplicated_and_sampled_reproducibly(tmp_path):
    from kalm.synth.personas import load_personas

    f = tmp_path / "personas.jsonl"
    rows = [{"persona": f"a  beekeeper number {i % 7}"} for i in range(20)] + [{"persona": "  "}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = GenerateConfig(personas=PersonaSource(path=f, num_personas=5, seed=3))
    a, b = load_personas(cfg), load_personas(cfg)
    assert a == b and len(a) == len(set(a)) == 5
    assert all(p.startswith("a beekeeper") for p in a)  # whitespace normalised before dedup
    other = load_personas(GenerateConfig(personas=PersonaSource(path=f, num_personas=5, seed=4)))
    assert set(other) != set(a) or other != a


def test_persona_check_rejects_what_smollm2_wrote_unconstrained():
    from kalm.synth.validate import check_persona, persona_schema

    # Real SmolLM2-135M answers to the text-to-persona prompt without the persona pattern.
    for bad in ["<NAME> (2016)", "{{name}}", "<unknown>", "[Comptroller of the Bank of Texas]",
                "<em>A pharmacist explaining medication</em>", "} A person is writing or reading the text. The answer is {",
                "a woman", "an outfielder"]:
        assert check_persona(bad) == "not_a_persona", bad
    # ... and with it (the pattern goes into the JSON schema the decoder is held to).
    for good in ["a person with a background in drone operations", "a man with a laptop",
                 "an old man with a scarf", "a   person who loves  to read"]:
        assert check_persona(good) is None, good
    assert persona_schema()["properties"]["persona"]["pattern"].startswith("^(a|an) ")


def test_bad_persona_file_names_line_and_fix(tmp_path):
    from kalm.synth.personas import load_personas

    f = tmp_path / "p.jsonl"
    f.write_text('{"persona": "ok"}\n{"name": "no persona field"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: no field 'persona'.*generate.personas.field"):
        load_personas(GenerateConfig(personas=PersonaSource(path=f)))


def test_builtin_seed_list_and_shards():
    from kalm.synth.generate import plan_shards
    from kalm.synth.personas import load_personas

    cfg = GenerateConfig(personas=PersonaSource(num_personas=10), personas_per_shard=4)
    personas = load_personas(cfg)
    shards = plan_shards(cfg, personas)
    assert [len(s) for s in shards] == [4, 4, 2] and sum(shards, []) == personas


def test_shard_key_ignores_orchestration_settings():
    from kalm.synth.generate import shard_key

    base = GenerateConfig()
    same = GenerateConfig(task_runner="threads", max_workers=4, time_budget_s=5)
    assert shard_key(base, ["a"]) == shard_key(same, ["a"])
    assert shard_key(base, ["a"]) != shard_key(base, ["b"])
    assert shard_key(base, ["a"]) != shard_key(GenerateConfig(max_new_tokens=97), ["a"])


_CLAIM_SCRIPT = """
import json, os, sys
from kalm.synth.backends.vllm import claim_gpus
print(json.dumps([claim_gpus(2, 2, sys.argv[1]), os.environ.get("CUDA_VISIBLE_DEVICES")]), flush=True)
sys.stdin.read()  # hold the claim until the parent closes our stdin
"""


def test_each_worker_process_claims_its_own_gpu_group(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("KALM_KEEP_CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # Separate interpreters, as the processes task runner's workers are; each reports on its own pipe.
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIM_SCRIPT, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        got = sorted(tuple(json.loads(p.stdout.readline())) for p in procs)
        assert got == [(0, "0,1"), (1, "2,3")]
        from kalm.synth.backends.vllm import claim_gpus

        with pytest.raises(RuntimeError, match="data_parallel_size"):
            claim_gpus(2, 2, tmp_path)  # a third worker finds every group taken
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_cluster_runner_missing_package_says_what_to_install():
    import importlib.util

    from tasks.generate import _runner

    for name, module in (("dask", "prefect_dask"), ("ray", "prefect_ray")):
        if importlib.util.find_spec(module) is None:
            with pytest.raises(RuntimeError, match=f"task_runner '{name}' needs"):
                _runner(GenerateConfig(task_runner=name))
    assert _runner(GenerateConfig(task_runner="threads", max_workers=3))._max_workers == 3


def test_disabled_stage_returns_nothing_quickly(tmp_path):
    import time

    from tasks.generate import generate_stage

    t = time.perf_counter()
    r = generate_stage(GenerateConfig(enabled=False), str(tmp_path))
    assert r.outputs == [] and r.counts == {"accepted": 0} and time.perf_counter() - t < 2


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="languages is empty"):
        GenerateConfig(languages=[])
    with pytest.raises(ValueError, match="extra"):
        GenerateConfig(vllm=VLLMOptions(tensor_parallel_size=1), bogus=1)


def test_vllm_backend_generates_schema_valid_json():
    pytest.importorskip("vllm", reason="vllm not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vllm installed but no GPU")
    from kalm.synth.backends import make_backend
    from kalm.synth.validate import ExampleAnswer, json_schema, parse

    backend = make_backend(GenerateConfig(backend="vllm", vllm=VLLMOptions(gpu_memory_utilization=0.3)))
    raws = backend.generate([[{"role": "user", "content": "Write a query, a positive and a hard negative."}]] * 4,
                            json_schema(ExampleAnswer), 96, 0.0, 0)
    assert sum(parse(r, ExampleAnswer)[0] is not None for r in raws) >= 3
