"""The embedder: any transformers AutoModel (decoder LLM or encoder) + pooling (+ normalization)."""

from __future__ import annotations

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


def _dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, cfg.dtype)


class Embedder(nn.Module):
    """Encodes token batches into one vector per text."""

    def __init__(self, path: str, cfg: TrainConfig, device: torch.device):
        super().__init__()
        from transformers import AutoModel

        kwargs: dict[str, Any] = {"dtype": _dtype(cfg, device)}
        if cfg.attn_implementation != "auto":
            kwargs["attn_implementation"] = cfg.attn_implementation
        elif device.type == "cuda":
            kwargs["attn_implementation"] = "sdpa"
        self.model = AutoModel.from_pretrained(path, **kwargs)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora.enabled:
            from peft import LoraConfig, get_peft_model

            self.model = get_peft_model(self.model, LoraConfig(
                r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules))
        if cfg.disable_dropout:
            for module in self.model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        self.pooling = cfg.pooling
        self.normalize = cfg.normalize

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = pool(hidden, attention_mask, self.pooling)
        return nn.functional.normalize(emb.float(), dim=-1) if self.normalize else emb.float()


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
