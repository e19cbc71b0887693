"""transformers backend: batched chat generation, left padding, JSON-schema constrained decoding
with xgrammar (the engine behind vLLM's structured outputs).

Greedy by default (``temperature: 0``); with sampling, each batch is seeded from the call's
seed, so a rerun of a shard writes the same tokens either way.
"""

from __future__ import annotations

import json
from typing import Any

from kalm.synth.backends.base import Budgets, Chat, Schemas, per_chat
from kalm.synth.config import GenerateConfig


def _guarded_processor(grammar, bans: list):  # grammar: one compiled grammar, or one per batch row
    """xgrammar's mask first, then the repetition bans; a row the bans would leave without any
    legal token keeps the grammar-only scores. (Otherwise argmax over all ``-inf`` picks an
    illegal token and xgrammar's matcher asserts: one bad row would crash the whole shard.)"""
    import torch
    import xgrammar as xgr
    from transformers import LogitsProcessor

    class Guarded(LogitsProcessor):
        def __init__(self):
            self.grammar = xgr.contrib.hf.LogitsProcessor(grammar)  # single use: one per generate()

        def __call__(self, input_ids, scores):
            scores = self.grammar(input_ids, scores)
            if not bans:
                return scores
            banned = scores.clone()
            for ban in bans:
                banned = ban(input_ids, banned)
            dead = torch.isneginf(banned).all(dim=-1)
            if dead.any():
                banned[dead] = scores[dead]
            return banned

    return Guarded()


class TransformersBackend:
    """``AutoModelForCausalLM.generate`` in batches of ``batch_size`` chats (CPU or one GPU)."""

    def __init__(self, cfg: GenerateConfig):
        import torch
        import xgrammar as xgr
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from kalm.models import transformers_path

        path = transformers_path(cfg.model)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"  # generation continues every row from its last token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)
        self._grammars: dict[str, Any] = {}
        self.batch_size = cfg.batch_size
        self.top_p = cfg.top_p
        self.repetition_penalty = cfg.repetition_penalty
        self.no_repeat_ngram_size = cfg.ngram_ban

    def _grammar(self, schema: dict[str, Any]):
        key = json.dumps(schema)  # not sorted: properties keep their order, the model writes the query first
        if key not in self._grammars:
            self._grammars[key] = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        return self._grammars[key]

    def _bans(self) -> list:
        from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

        bans = []
        if self.repetition_penalty > 1.0:
            bans.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.no_repeat_ngram_size > 0:
            bans.append(NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size))
        return bans

    def generate(self, chats: list[Chat], schema: Schemas, max_new_tokens: Budgets, temperature: float,
                 seed: int) -> list[str]:
        """One answer per chat. ``schema`` and ``max_new_tokens`` are one for all chats or one per chat;
        chats are batched in order of their token budget (a batch runs to its largest budget), and the
        answers come back in the chats' order."""
        import torch

        schemas, budgets = per_chat(chats, schema, max_new_tokens)
        order = sorted(range(len(chats)), key=lambda i: budgets[i])
        out: list[str] = [""] * len(chats)
        for i in range(0, len(order), self.batch_size):
            rows = order[i:i + self.batch_size]
            prompts = [self.tokenizer.apply_chat_template(chats[r], tokenize=False, add_generation_prompt=True)
                       for r in rows]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            torch.manual_seed(seed + i)
            sampling = ({"do_sample": True, "temperature": temperature, "top_p": self.top_p} if temperature > 0
                        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
            grammars = [self._grammar(schemas[r]) for r in rows]
            with torch.inference_mode():
                ids = self.model.generate(
                    **enc, max_new_tokens=max(budgets[r] for r in rows), pad_token_id=self.tokenizer.pad_token_id,
                    logits_processor=[_guarded_processor(grammars, self._bans())], **sampling)
            new = ids[:, enc["input_ids"].shape[1]:]
            for r, text in zip(rows, self.tokenizer.batch_decode(new, skip_special_tokens=True)):
                out[r] = text
        return out
