"""Fast checks of the generate stage's parts: personas, sharding, GPU groups for vLLM data
parallelism, the config's consistency checks, lengths and schemas per task type, prompts, the task
runner choice, the disabled stage, and the vLLM backend where installed."""

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


def test_fewer_personas_than_asked_is_a_config_error_or_a_flag(tmp_path):
    """The built-in list (24) is known before any work: asking for more is a config error naming the
    fix (a 50-persona run of the CPU default silently made 24). A file with fewer is flagged."""
    from kalm.config import ConfigError, load_config
    from kalm.synth.personas import load_personas, persona_shortfall

    with pytest.raises(ConfigError, match=r"num_personas is 50, but the built-in list has 24 personas.*"
                                          r"personas.path \(PersonaHub-style JSONL\)"):
        load_config("cpu-demo", {"generate.personas.num_personas": 50})
    assert load_config("cpu-demo", {"generate.personas.num_personas": 24}).generate.personas.num_personas == 24
    f = tmp_path / "personas.jsonl"
    f.write_text("".join(json.dumps({"persona": f"a beekeeper number {i % 3}"}) + "\n" for i in range(9)))
    cfg = GenerateConfig(personas=PersonaSource(path=f, num_personas=5))
    personas = load_personas(cfg)
    assert len(personas) == 3
    assert persona_shortfall(cfg, personas).startswith("personas: 3 distinct of the 5 asked for")
    assert persona_shortfall(cfg.model_copy(update={"personas": PersonaSource(path=f, num_personas=3)}), personas) is None


def test_persona_check_rejects_what_smollm2_wrote_unconstrained():
    from kalm.synth.validate import check_persona, persona_schema

    # Real SmolLM2-135M answers to the text-to-persona prompt without the persona pattern.
    for bad in ["<NAME> (2016)", "{{name}}", "<unknown>", "[Comptroller of the Bank of Texas]",
                "<em>A pharmacist explaining medication</em>", "} A person is writing or reading the text. The answer is {",
                "a woman", "an outfielder"]:
        assert check_persona(bad) == "not_a_persona", bad
    # Held to the pattern, over SciFact claims: the prompt said back, a phrase cut before its noun.
    for echo in ["an example of a person who might write or read this text", "a person who reads the text",
                 "a person who might write or read this claim"]:
        assert check_persona(echo) == "persona_copies_prompt", echo
    for who in ["a lawyer who drafts the text of contracts", "a linguist who studies that text type"]:
        assert check_persona(who) is None, who
    assert check_persona("a total of") == "not_a_persona"
    # ... and with it (the pattern goes into the JSON schema the decoder is held to).
    for good in ["a person with a background in drone operations", "a man with a laptop",
                 "an old man with a scarf", "a   person who loves  to read", "a textbook author who writes for nurses"]:
        assert check_persona(good) is None, good
    assert persona_schema()["properties"]["persona"]["pattern"].startswith("^(a|an) ")
    # Servers that ignore the pattern write PersonaHub's own spellings: capitals, digits, accents pass.
    for good in ["A Python developer who maintains open-source libraries", "an NHS nurse on night shifts",
                 "a 35-year-old teacher in Lyon", "a 35–year–old teacher", "a café owner in Montréal",
                 "An R&D engineer at a battery maker", "an engineer (battery cells) in Nevada.",
                 "a retired nurse (night shifts)"]:
        assert check_persona(good) is None, good
    # Template slots, echoes and cut-off phrases, also with punctuation after them (the review's finds).
    for bad in ["a {{role}} who writes", "a user_name who reads", "The nurse on night shifts", "A Total Of",
                "a total of.", "a total of,", "a nurse who works in.", "a reader of the text (", "a nurse, a teacher,",
                "a nurse (on night shifts"]:
        assert check_persona(bad) == "not_a_persona", bad
    for echo in ["A person who writes or reads This Text", "A person who would write this text.",
                 "an author of (this text)", "A person who would read this passage", "a person who wrote this document",
                 "A reader of the text above", "a user who asked this question", "a person who would write the text"]:
        assert check_persona(echo) == "persona_copies_prompt", echo
    for who in ["a translator who proofreads the text", "a court stenographer who transcribes the text"]:
        assert check_persona(who) is None, who  # work on texts is not an echo of the prompt


def test_derived_personas_keep_one_spelling():
    from kalm.synth.validate import persona_form

    assert persona_form("A Python developer") == "a Python developer"
    assert persona_form("An NHS  nurse.") == persona_form("an NHS nurse") == "an NHS nurse"
    assert persona_form("a nurse") == "a nurse" and persona_form("Apple fan club") == "Apple fan club"


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
    assert shard_key(base, ["a"]) != shard_key(GenerateConfig(max_new_tokens=4000), ["a"])
    assert shard_key(base, ["a"]) != shard_key(GenerateConfig(knobs={"num_words": [60]}), ["a"])


_CLAIM_SCRIPT = """
import json, os, sys
from kalm.synth.backends.vllm import visible_gpus
from kalm.synth.config import GenerateConfig
cfg = GenerateConfig(backend="vllm", task_runner="processes", max_workers=2,
                     vllm={"data_parallel_size": 2, "tensor_parallel_size": 2})
print(json.dumps(visible_gpus(cfg, sys.argv[1])), flush=True)
sys.stdin.read()  # hold the claim until the parent closes our stdin
"""


def test_each_worker_process_on_one_node_claims_its_own_gpu_group(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # Separate interpreters, as the processes task runner's workers are; each reports on its own pipe.
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIM_SCRIPT, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        got = sorted(json.loads(p.stdout.readline()) for p in procs)
        assert got == ["0,1", "2,3"]
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


def test_scheduler_cuda_visible_devices_is_respected(tmp_path, monkeypatch):
    from kalm.synth.backends.vllm import visible_gpus

    ray = GenerateConfig(backend="vllm", task_runner="ray", max_workers=2,
                         vllm={"data_parallel_size": 2, "tensor_parallel_size": 2})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # what Ray sets for a task given num_gpus=2
    assert visible_gpus(ray, tmp_path) == "5,7" and list(tmp_path.iterdir()) == []  # kept, nothing claimed
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(RuntimeError, match="gives this worker 1 GPU.*tensor_parallel_size is 2.*num_gpus"):
        visible_gpus(ray, tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(RuntimeError, match="no GPUs.*request 2 GPU"):
        visible_gpus(ray, tmp_path)  # a Ray task that asked for none: never guess from a node-local lock
    assert visible_gpus(GenerateConfig(backend="vllm"), tmp_path) is None  # one group: every GPU of the node


@pytest.mark.parametrize("overrides,message", [
    ({}, "generate.max_workers 8 > generate.vllm.data_parallel_size 2.*set max_workers to 2"),
    ({"generate.max_workers": 2, "generate.no_repeat_ngram_size": 4},
     "generate.no_repeat_ngram_size 4: the vllm backend has no n-gram ban"),
    ({"generate.max_workers": 2, "generate.task_runner": "threads"},
     "data_parallel_size 2 runs one vLLM engine per GPU group.*not 'threads'"),
    ({"generate.max_workers": 2, "generate.max_new_tokens": 1024},
     "generate.max_new_tokens 1024 cannot fit the longest retrieval answer.*query of up to \\d+ words, "
     "positive \\(document\\) of up to \\d+ words, hard_negative \\(document\\).*knobs.num_words 400.*1592 tokens"),
    ({"generate.max_workers": 2, "generate.vllm.data_parallel_size": 1},
     "generate.max_workers 2 with generate.vllm.data_parallel_size 1"),
])
def test_check_config_rejects_kalm_mini_contradictions(overrides, message):
    """The combinations issue 21 found in kalm-mini (max_workers 8 with data_parallel_size 2, an
    n-gram ban vLLM lacks, ...) fail `kalm check-config`, naming the fields; the preset itself passes."""
    from kalm.cli import main
    from kalm.config import ConfigError, load_config

    assert load_config("kalm-mini", check_paths=False).generate.max_workers == 2
    bad = {"generate.max_workers": 8, **overrides}
    with pytest.raises(ConfigError, match=message):
        load_config("kalm-mini", bad, check_paths=False)
    args = [x for k, v in bad.items() for x in ("--set", f"{k}={v}")]
    assert main(["check-config", "kalm-mini", *args]) == 2


def test_lengths_follow_task_type_and_knobs():
    from kalm.synth.tasks import KINDS, answer_tokens, field_bounds, longest_answer, max_new_tokens

    cfg = GenerateConfig()
    q, pos, neg = field_bounds(cfg, "retrieval", 200, ("en",) * 3)
    assert q[1] < pos[1] and pos == neg and pos[1] >= 200 * 1.25 * 8 > 120  # documents, not 120-char sentences
    zh = field_bounds(cfg, "retrieval", 200, ("zh",) * 3)[1]
    assert zh[1] < pos[1]  # a Chinese "word" is 1-3 characters
    assert set(KINDS) >= {"retrieval", "sts", "classification", "clustering", "pair_classification", "reranking",
                          "bitext"}
    assert answer_tokens(cfg, "retrieval", 400) > answer_tokens(cfg, "retrieval", 50) > answer_tokens(cfg, "sts", 50) / 2
    assert max_new_tokens(cfg.model_copy(update={"max_new_tokens": 300}), "retrieval", 400) == 300
    assert longest_answer(cfg)[0] == "retrieval"
    from kalm.synth.tasks import brainstorm_tokens

    assert 16 < brainstorm_tokens(cfg) < 200


def _jobs(cfg):
    from kalm.synth.generate import example_job
    from kalm.synth.prompts import task_specs
    from kalm.synth.tasks import SINGLE_STAGE, example_types

    specs = task_specs(cfg)
    return {t: example_job(cfg, specs, "a beekeeper in the Alps", t,
                           specs[t].get("instruction") if t in SINGLE_STAGE else "Find guides for hive care.", 0)
            for t in example_types(cfg)}


def test_every_task_type_has_a_template_and_a_schema_of_its_lengths():
    from kalm.synth.tasks import SINGLE_STAGE

    cfg = GenerateConfig(task_types=["retrieval", "sts", "classification", "clustering", "pair_classification",
                                     "reranking"], languages=["en", "fr"], seed=3)
    jobs = _jobs(cfg)
    assert set(jobs) == {*cfg.task_types, "bitext"}  # bitext: several languages
    assert "bitext" not in _jobs(cfg.model_copy(update={"languages": ["en"]}))
    for t, job in jobs.items():
        prompt = job["chat"][0]["content"]
        assert "{" not in prompt.replace("{}", "") or '"' in prompt, t  # every placeholder filled
        props = job["schema"]["properties"]
        assert list(props) == ["query", "positive", "hard_negative"] and job["schema"]["additionalProperties"] is False
        assert [(p["minLength"], p["maxLength"]) for p in props.values()] == job["bounds"]
        # The persona conditions the brainstorm only; single-stage types have no other place for it.
        assert ("beekeeper" in prompt) == (t in SINGLE_STAGE), t
    assert jobs["retrieval"]["knobs"].keys() == {"query_type", "query_length", "clarity", "difficulty", "num_words"}
    assert f"about {jobs['retrieval']['knobs']['num_words']} words" in jobs["retrieval"]["chat"][0]["content"]
    src, tgt, _ = jobs["bitext"]["languages"]
    assert src != tgt and jobs["bitext"]["language"] == f"{src}-{tgt}"
    both = _jobs(cfg.model_copy(update={"persona_in": "both"}))
    assert both["retrieval"]["chat"][0]["content"].startswith("You are a beekeeper")  # the ablation's old behaviour


def test_knobs_are_drawn_per_example_from_config_and_seed():
    cfg = GenerateConfig(knobs={"num_words": [50, 100, 200, 300, 400]})
    from kalm.synth.generate import example_job
    from kalm.synth.prompts import task_specs

    specs = task_specs(cfg)
    draws = [example_job(cfg, specs, f"a person number {i}", "retrieval", "Find guides.", 0)["knobs"]
             for i in range(40)]
    assert draws == [example_job(cfg, specs, f"a person number {i}", "retrieval", "Find guides.", 0)["knobs"]
                     for i in range(40)]  # reproducible
    for name, options in (("query_type", cfg.knobs.query_type), ("num_words", cfg.knobs.num_words)):
        assert {d[name] for d in draws} == set(options), name  # every value drawn over 40 examples
    other = [example_job(cfg.model_copy(update={"seed": 1}), specs, f"a person number {i}", "retrieval",
                         "Find guides.", 0)["knobs"] for i in range(40)]
    assert other != draws


def test_fenced_and_rejected_answers():
    from kalm.synth.validate import RejectedAnswer, parse_example, strip_fence

    plain = '{"query": "a b c", "positive": "d e f", "hard_negative": "g h i"}'
    for fenced in (f"```json\n{plain}\n```", f"```\n{plain}\n```", f"  ```JSON\n{plain}```  "):
        assert strip_fence(fenced) == plain
        assert parse_example(fenced, ["query", "positive", "hard_negative"])[0] is not None
    assert parse_example("```json\n{\"query\": \"a b", ["query"])[1] == "truncated_json"  # cut inside the fence
    assert parse_example(RejectedAnswer("response_format: unsupported"), ["query"]) == (None, "request_rejected")


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


def test_vllm_backend_generates_schema_valid_json():  # on a GPU machine with vllm
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


def test_low_yield_rule_keeping_nothing_is_low_unless_the_check_is_off():
    """min_yield is a fraction of the examples asked for; keeping none is low at any positive value (even
    one asked for, where 5 % of it rounds to nothing), and min_yield 0 turns the check off (CI once failed
    a test that set 0 to allow an all-rejected shard)."""
    from kalm.synth.generate import low_yield

    def stats(asked, accepted):
        return {"asked": asked, "accepted": accepted, "dropped": {"copied_prompt": asked - accepted}}

    on, off = GenerateConfig(min_yield=0.05), GenerateConfig(min_yield=0.0)
    assert low_yield(on, stats(1, 0)).startswith("generation kept 0 of 1 examples asked for (0.0% < generate.min_yield 0.05)")
    assert "drops: copied_prompt 1" in low_yield(on, stats(1, 0))
    assert low_yield(on, stats(100, 4)) is not None and low_yield(on, stats(100, 5)) is None
    assert low_yield(off, stats(1, 0)) is None and low_yield(off, stats(100, 0)) is None
    assert low_yield(on, stats(0, 0)) is None  # nothing asked (no personas planned): nothing to judge
