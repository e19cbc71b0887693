"""InfoNCE with in-batch and hard negatives, gathered across processes.

Inputs:
    q: [B, D] query embeddings (this rank's B queries).
    d: [B * (1 + k), D] document embeddings: B positives (row i is query i's), then k hard
       negatives per query (rows B + i*k ... B + i*k + k - 1).
    in_batch: [B] bool, whether query i may use other queries' documents as negatives.

Under DDP, queries and documents are all-gathered with ``torch.distributed.nn.all_gather``
(which keeps gradients), so every query sees the whole global batch as negatives.

Duplicate texts are never negatives (``q_hash``/``d_hash``: 64-bit hashes of the raw texts,
gathered across ranks like the embeddings). For row i, a document other than its positive is
masked when its text equals row i's positive (a repeated positive, e.g. STS-B's repeated
sentences, or NLI premises 3-4 times over), when it equals row i's query and row i's task is
symmetric (an STS pair appearing in both orders), and when it is the positive of another row
with the same query text (several correct answers to one question). With perfect embeddings
such a batch has loss ~0 instead of a floor of log(1 + duplicates).

Classification and clustering examples share labels within a batch, so another example's
positive is often a true positive. For those task types (``in_batch`` False) the negatives are
the example's own hard negatives plus the other examples' positives whose ``labels`` differ
(same-label ones are masked: they are false negatives). Without labels, only its own hard
negatives count, as KaLM does for non-retrieval tasks.

References: van den Oord et al. 2018 (InfoNCE); Hu et al. 2025 (KaLM-Embedding);
Kusupati et al. 2022 (Matryoshka Representation Learning).

Example::

    loss = info_nce(q, d, in_batch=torch.ones(len(q), dtype=torch.bool), num_hard=1, temperature=0.05)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank, keeping gradients for this rank's part."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def _regroup(d: torch.Tensor, B: int, k: int, world: int) -> torch.Tensor:
    """Gathered docs arrive rank by rank ([pos_r, neg_r] per rank): reorder to [all pos, all neg]."""
    if world == 1:
        return d
    chunks = d.split(B * (1 + k))
    return torch.cat([c[:B] for c in chunks] + [c[B:] for c in chunks], dim=0)


def info_nce(q: torch.Tensor, d: torch.Tensor, in_batch: torch.Tensor, num_hard: int, temperature: float,
             normalize: bool = True, labels: torch.Tensor | None = None, q_hash: torch.Tensor | None = None,
             d_hash: torch.Tensor | None = None, symmetric: torch.Tensor | None = None) -> torch.Tensor:
    """Mean InfoNCE over the global batch; see the module docstring for shapes.

    ``q_hash`` [B], ``d_hash`` [B(1+k)] (int64 text hashes) and ``symmetric`` [B] (bool) turn on
    duplicate masking; without them no duplicates are known."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    B_local = q.shape[0]
    q_all, in_batch_all = gather(q), gather(in_batch.to(torch.long)).bool()
    d_all = _regroup(gather(d), B_local, num_hard, world)
    if normalize:
        q_all, d_all = F.normalize(q_all, dim=-1), F.normalize(d_all, dim=-1)
    B = q_all.shape[0]
    scores = q_all @ d_all.T / temperature  # [B, B(1+k)]
    rows = torch.arange(B, device=q.device)
    own = torch.zeros_like(scores, dtype=torch.bool)
    own[rows, rows] = True
    for j in range(num_hard):
        own[rows, B + rows * num_hard + j] = True
    allowed = own | in_batch_all[:, None]
    if labels is not None:  # label-aware in-batch negatives: other labels' positives only
        labels_all = gather(labels)
        allowed[:, :B] |= (labels_all[:, None] != labels_all[None, :]) & (labels_all[:, None] >= 0)
    if q_hash is not None and d_hash is not None:
        allowed &= ~duplicate_mask(gather(q_hash), _regroup(gather(d_hash), B_local, num_hard, world),
                                   gather(symmetric.to(torch.long)).bool() if symmetric is not None else None)
    allowed[rows, rows] = True
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return F.cross_entropy(scores, rows)


def duplicate_mask(q_hash: torch.Tensor, d_hash: torch.Tensor, symmetric: torch.Tensor | None) -> torch.Tensor:
    """[B, B(1+k)] True where a document is a duplicate of a right answer for the row (see module docstring).

    The own positive (column i) is marked too; the caller keeps it as the target."""
    B = q_hash.shape[0]
    dup = d_hash[None, :] == d_hash[:B, None]  # the row's positive text, anywhere
    same_query = q_hash[:, None] == q_hash[None, :]
    dup[:, :B] |= same_query  # positives of rows asking the same question
    if symmetric is not None:
        dup |= symmetric[:, None] & (d_hash[None, :] == q_hash[:, None])  # the row's own query text
    return dup


def matryoshka_info_nce(q: torch.Tensor, d: torch.Tensor, in_batch: torch.Tensor, num_hard: int, temperature: float,
                        dims: list[int], weights: list[float], labels: torch.Tensor | None = None,
                        **dups: torch.Tensor | None) -> torch.Tensor:
    """Weighted InfoNCE over truncations of the embeddings (Matryoshka); full size when ``dims`` is empty.

    ``labels``: [B] int label ids for label-aware negatives (-1 where an example has no label);
    ``dups``: ``q_hash``, ``d_hash``, ``symmetric`` for duplicate masking (see :func:`info_nce`)."""
    if not dims:
        return info_nce(q, d, in_batch, num_hard, temperature, labels=labels, **dups)
    weights = weights or [1.0] * len(dims)
    return sum(w * info_nce(q[:, :dim], d[:, :dim], in_batch, num_hard, temperature, labels=labels, **dups)
               for dim, w in zip(dims, weights)) / sum(weights)
