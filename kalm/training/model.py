"""The embedder: any transformers AutoModel (decoder LLM or encoder) + pooling (+ normalization).

Precision (``train.dtype``, ``train.param_dtype``): the weights are stored in ``param_dtype``
(float32 unless a LoRA run keeps its frozen base in bf16; peft keeps the adapters float32);
with a bf16 compute dtype the forward runs under ``torch.autocast`` (fp32 master weights,
bf16 matmuls: what DeepSpeed's and torch.amp's mixed precision do). Under FSDP2 the cast is
FSDP's MixedPrecisionPolicy instead and autocast is off (``Embedder.autocast_dtype = None``).

Parameters the loss never reaches (BERT's pooler: its output is not pooled here) are frozen
(:func:`freeze_unused`): DDP otherwise waits for their gradients and fails at step 2.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from kalm.training.config import TrainConfig


def load_tokenizer(path: str, pooling: str):
    """The student's tokenizer; for last-token pooling it appends EOS to every text.

    ``add_eos_token`` is saved with the tokenizer, so the exported sentence-transformers model
    tokenizes exactly as training did (its last token is the EOS whose state is pooled).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if pooling == "last_token":
        if tok.eos_token is None:
            raise ValueError(f"{path}: tokenizer has no EOS token; last_token pooling needs one (use pooling: mean)")
        tok.add_eos_token = True
    return tok


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """The dtype of the forward and backward matmuls (``train.dtype``; auto = bf16 on a GPU that has it)."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, cfg.dtype)


class Embedder(nn.Module):
    """Encodes token batches into one vector per text."""

    def __init__(self, path: str, cfg: TrainConfig, device: torch.device):
        super().__init__()
        from transformers import AutoModel

        # Full fine-tuning keeps fp32 master weights; only a LoRA run may store its frozen base in bf16.
        kwargs: dict[str, Any] = {"dtype": getattr(torch, cfg.param_dtype)}
        if cfg.attn_implementation != "auto":
            kwargs["attn_implementation"] = cfg.attn_implementation
        elif device.type == "cuda":
            kwargs["attn_implementation"] = "sdpa"
        self.model = AutoModel.from_pretrained(path, **kwargs)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora.enabled:
            from peft import LoraConfig, get_peft_model

            # autocast_adapter_dtype (peft's default) keeps the adapters float32 over a bf16 base.
            self.model = get_peft_model(self.model, LoraConfig(
                r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules), autocast_adapter_dtype=True)
        if cfg.disable_dropout:
            for module in self.model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        self.pooling = cfg.pooling
        self.normalize = cfg.normalize
        dtype = compute_dtype(cfg, device)
        self.device_type = device.type
        self.autocast_dtype: torch.dtype | None = dtype if dtype != torch.float32 else None

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[n, L] token ids and mask -> [n, hidden] float32 embeddings (unit length when ``normalize``)."""
        amp = torch.autocast(self.device_type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with amp:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            emb = pool(hidden, attention_mask, self.pooling)
        return nn.functional.normalize(emb.float(), dim=-1) if self.normalize else emb.float()


def freeze_unused(embedder: Embedder, device: torch.device) -> list[str]:
    """Freeze trainable parameters that get no gradient from an embedding (e.g. BERT's pooler).

    One forward and backward of a two-text batch finds them; returns their names. Run before
    wrapping in DDP/FSDP (every rank finds the same ones: same model, same input)."""
    ids = torch.tensor([[1, 2, 3], [1, 2, 0]], device=device)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], device=device)
    embedder.zero_grad(set_to_none=True)
    embedder(ids, mask).sum().backward()
    unused = [n for n, p in embedder.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in embedder.named_parameters():
        if n in unused:
            p.requires_grad_(False)
    embedder.zero_grad(set_to_none=True)
    return unused


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last_token":  # right padding: the last real token is at length - 1
        last = mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling {mode!r}: use mean, last_token or cls")
