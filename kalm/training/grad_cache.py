"""GradCache: a contrastive step whose memory does not grow with the batch size.

The InfoNCE loss couples every query with every document of the (global) batch, so a large
batch normally needs all activations in memory at once. GradCache (Gao et al. 2021, "Scaling
Deep Contrastive Learning Batch Size under Memory Limited Setup") splits the step in three:

1. embed every text in chunks of ``chunk_size`` without autograd (no activations kept);
2. compute the loss on those embeddings and backpropagate it to the embeddings only;
3. embed each chunk again, with autograd, and backpropagate the cached embedding gradients
   through the encoder, one chunk at a time.

Parameter gradients equal a plain step's (the loss is the same function of the same
embeddings), provided the forward pass is deterministic: dropout off, which the trainer's
``disable_dropout`` default guarantees. Under DDP only the last chunk's backward syncs.

Example::

    loss = grad_cache_step(model, [q_tokens, d_tokens], lambda q, d: info_nce(q, d, ...), chunk_size=8)
    optimizer.step()
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch


def _chunks(tokens: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    n = tokens["input_ids"].shape[0]
    return [{k: v[i:i + size] for k, v in tokens.items()} for i in range(0, n, size)]


def _no_sync(model: torch.nn.Module):
    """Skip the gradient all-reduce for this backward (DDP's no_sync, FSDP2's requires-sync flag)."""
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        @contextlib.contextmanager
        def _fsdp():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        return _fsdp()
    return contextlib.nullcontext()


def grad_cache_step(model: torch.nn.Module, inputs: Sequence[dict[str, torch.Tensor]],
                    loss_fn: Callable[..., torch.Tensor], chunk_size: int) -> torch.Tensor:
    """Run forward and backward for one batch; returns the (detached) loss.

    ``inputs``: token dicts (``input_ids``, ``attention_mask``, on the model's device), one per
    argument of ``loss_fn`` (queries, documents). Gradients are left in the parameters' ``.grad``.
    """
    chunked = [_chunks(t, chunk_size) for t in inputs]
    with torch.no_grad():
        cached = [torch.cat([model(c["input_ids"], c["attention_mask"]) for c in chunks]) for chunks in chunked]
    leaves = [e.detach().requires_grad_() for e in cached]
    loss = loss_fn(*leaves)
    loss.backward()  # gradients w.r.t. the embeddings only: the encoder is not in this graph
    work = [(c, g) for chunks, leaf in zip(chunked, leaves)
            for c, g in zip(chunks, leaf.grad.split(chunk_size))]
    for i, (c, grad) in enumerate(work):
        ctx = contextlib.nullcontext() if i == len(work) - 1 else _no_sync(model)
        with ctx:
            emb = model(c["input_ids"], c["attention_mask"])
            emb.backward(grad)
    return loss.detach()
