"""The task batch sampler and the InfoNCE loss (pure logic, fast)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from kalm.training.data import text_hashes
from kalm.training.loss import info_nce, matryoshka_info_nce
from kalm.training.sampler import TaskBatchSampler, rank_slice

TASKS = ["a"] * 64 + ["b"] * 64 + ["c"] * 40


def _share(batch, tasks):
    return Counter(tasks[i] for i in batch).most_common(1)[0][1] / len(batch)


def test_semi_homogeneous_batches_are_mostly_one_task():
    s = TaskBatchSampler(TASKS, batch_size=16, mode="semi_homogeneous", share=0.75, seed=1)
    shares = [_share(s.next_batch(), TASKS) for _ in range(8)]
    assert min(shares) >= 0.75 and sum(shares) / len(shares) < 1.0  # 4 mixed slots per batch


def test_homogeneous_and_random_modes():
    hom = TaskBatchSampler(TASKS, 16, mode="homogeneous", seed=0)
    assert all(_share(hom.next_batch(), TASKS) == 1.0 for _ in range(8))
    rnd = TaskBatchSampler(TASKS, 16, mode="random", seed=0)
    assert min(_share(rnd.next_batch(), TASKS) for _ in range(8)) < 1.0


def test_sampler_is_deterministic_and_resumable():
    a = TaskBatchSampler(TASKS, 16, seed=3)
    first = [a.next_batch() for _ in range(5)]
    state = a.state_dict()
    rest = [a.next_batch() for _ in range(12)]  # crosses an epoch boundary
    b = TaskBatchSampler(TASKS, 16, seed=3)
    assert [b.next_batch() for _ in range(5)] == first
    c = TaskBatchSampler(TASKS, 16, seed=3)
    c.load_state_dict(state)
    assert [c.next_batch() for _ in range(12)] == rest


@pytest.mark.parametrize("mode", ["semi_homogeneous", "homogeneous", "random"])
def test_length_grouping_cuts_padding_and_keeps_the_sampling_contract(mode):
    import random

    lengths = [random.Random(i).randint(5, 120) for i in range(len(TASKS))]
    plain = TaskBatchSampler(TASKS, 16, mode=mode, share=0.75, seed=2)
    grouped = TaskBatchSampler(TASKS, 16, mode=mode, share=0.75, seed=2, lengths=lengths, length_window=4)

    def padded(batches):  # tokens a batch costs when padded to its longest example
        return sum(16 * max(lengths[i] for i in b) for b in batches)

    plain_epoch, grouped_epoch = plain.epoch_batches(0), grouped.epoch_batches(0)
    assert len(grouped_epoch) == len(plain_epoch) and all(len(b) == 16 for b in grouped_epoch)
    flat = [i for b in grouped_epoch for i in b]
    assert len(set(flat)) == len(flat)  # no example twice in an epoch
    assert padded(grouped_epoch) < 0.8 * padded(plain_epoch)
    if mode != "random":
        assert min(_share(b, TASKS) for b in grouped_epoch) >= (0.75 if mode == "semi_homogeneous" else 1.0)
    # Still deterministic and resumable.
    first = [grouped.next_batch() for _ in range(3)]
    state = grouped.state_dict()
    again = TaskBatchSampler(TASKS, 16, mode=mode, share=0.75, seed=2, lengths=lengths, length_window=4)
    assert [again.next_batch() for _ in range(3)] == first
    again.load_state_dict(state)
    assert again.next_batch() == grouped.next_batch()
    with pytest.raises(ValueError, match="one length per example"):
        TaskBatchSampler(TASKS, 16, lengths=lengths[:-1])


def test_rank_slices_partition_the_global_batch():
    batch = list(range(12))
    assert rank_slice(batch, 0, 2) + rank_slice(batch, 1, 2) == batch
    with pytest.raises(ValueError, match="multiple of nproc_per_node"):
        rank_slice(batch, 0, 5)


def test_info_nce_matches_a_direct_computation():
    torch.manual_seed(0)
    q, d = torch.randn(4, 8), torch.randn(8, 8)  # 4 positives then 1 hard negative each
    loss = info_nce(q, d, torch.ones(4, dtype=torch.bool), num_hard=1, temperature=0.1)
    scores = F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T / 0.1
    assert torch.allclose(loss, F.cross_entropy(scores, torch.arange(4)), atol=1e-6)


def test_classification_rows_see_only_their_own_negatives():
    torch.manual_seed(0)
    q, d = torch.randn(4, 8), torch.randn(8, 8)
    loss = info_nce(q, d, torch.zeros(4, dtype=torch.bool), num_hard=1, temperature=0.1)
    qn, dn = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
    expected = torch.stack([F.cross_entropy((torch.stack([qn[i] @ dn[i], qn[i] @ dn[4 + i]]) / 0.1)[None],
                                            torch.tensor([0])) for i in range(4)]).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_matryoshka_weights_truncations():
    torch.manual_seed(0)
    q, d = torch.randn(4, 8), torch.randn(8, 8)
    ib = torch.ones(4, dtype=torch.bool)
    full = info_nce(q, d, ib, 1, 0.1)
    half = info_nce(q[:, :4], d[:, :4], ib, 1, 0.1)
    mrl = matryoshka_info_nce(q, d, ib, 1, 0.1, dims=[8, 4], weights=[1.0, 0.5])
    assert torch.allclose(mrl, (full + 0.5 * half) / 1.5, atol=1e-6)


def test_label_aware_negatives_mask_only_same_label_positives():
    torch.manual_seed(0)
    q, d = torch.randn(4, 8), torch.randn(8, 8)
    labels = torch.tensor([5, 5, 9, -1])  # rows 0 and 1 share a label; row 3 has none
    loss = info_nce(q, d, torch.zeros(4, dtype=torch.bool), num_hard=1, temperature=0.1, labels=labels)
    qn, dn = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
    # own positive first; other labels' (and unlabeled examples') positives; own hard negative
    allowed = {0: [0, 2, 3, 4], 1: [1, 2, 3, 5], 2: [2, 0, 1, 3, 6], 3: [3, 7]}
    expected = torch.stack([F.cross_entropy((qn[i] @ dn[cols].T / 0.1)[None], torch.tensor([0]))
                            for i, cols in allowed.items()]).mean()
    assert torch.allclose(loss, expected, atol=1e-6)



def _onehots(texts: list[str], dim: int = 16) -> torch.Tensor:
    """A 'perfect' embedding for these tests: one vector per distinct text, equal texts coincide."""
    vocab = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    return torch.stack([torch.eye(dim)[vocab[t]] for t in texts])


def test_duplicated_positives_in_a_batch_are_not_negatives():
    """Rows 0 and 2 share a positive, rows 1 and 3 too (STS-B repeats positives, NLI premises
    repeat 3-4x). A perfect model (each query embeds as its positive) still pays log 2 when the
    twin counts as a negative; masked, the loss is ~0."""
    queries, positives, negatives = ["q0", "q1", "q2", "q3"], ["pA", "pB", "pA", "pB"], ["n0", "n1", "n2", "n3"]
    q, d = _onehots(positives), _onehots(positives + negatives)
    q_hash, d_hash = torch.from_numpy(text_hashes(queries)), torch.from_numpy(text_hashes(positives + negatives))
    ib, no = torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    assert info_nce(q, d, ib, num_hard=1, temperature=0.01) > 0.69  # log 2
    assert info_nce(q, d, ib, 1, 0.01, q_hash=q_hash, d_hash=d_hash, symmetric=no) < 1e-6
    # Across Matryoshka truncations too.
    assert matryoshka_info_nce(q, d, ib, 1, 0.01, [16, 8], [], q_hash=q_hash, d_hash=d_hash, symmetric=no) < 1e-6
    # A hard negative equal to the row's own positive is masked as well.
    negatives2 = ["pA", "n1", "n2", "n3"]
    d2 = _onehots(positives + negatives2)
    assert info_nce(q, d2, ib, 1, 0.01) > 0.69
    assert info_nce(q, d2, ib, 1, 0.01, q_hash=q_hash, d_hash=torch.from_numpy(text_hashes(positives + negatives2)),
                    symmetric=no) < 1e-6


def test_positives_of_rows_with_the_same_query_are_masked():
    """Case 07's loss part: four correct answers to one query in one batch. Counted as negatives the
    loss can never go below log 4 (identical queries); masked, it is 0."""
    torch.manual_seed(0)
    q = torch.randn(1, 8).repeat(4, 1)
    d = torch.randn(4, 8)
    q_hash = torch.from_numpy(text_hashes(["how do I change my password"] * 4))
    d_hash = torch.from_numpy(text_hashes(["a1", "a2", "a3", "a4"]))
    ib = torch.ones(4, dtype=torch.bool)
    assert info_nce(q, d, ib, 0, 0.05) >= math.log(4) - 1e-5
    assert info_nce(q, d, ib, 0, 0.05, q_hash=q_hash, d_hash=d_hash) < 1e-6


def test_symmetric_rows_do_not_take_their_own_query_text_as_a_negative():
    """An STS pair in both orders: (s1 -> s2) and (s2 -> s1). A perfect model embeds the paraphrases
    alike, so row 0's other document, the text s1, is its own query: masked for symmetric tasks only."""
    q, d = torch.ones(2, 4), torch.ones(2, 4)
    q_hash, d_hash = torch.from_numpy(text_hashes(["s1", "s2"])), torch.from_numpy(text_hashes(["s2", "s1"]))
    ib, sym = torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    assert info_nce(q, d, ib, 0, 0.01) > 0.69
    assert info_nce(q, d, ib, 0, 0.01, q_hash=q_hash, d_hash=d_hash, symmetric=sym) < 1e-6
    assert info_nce(q, d, ib, 0, 0.01, q_hash=q_hash, d_hash=d_hash, symmetric=~sym) > 0.69


def _two_rank_loss(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    # Global batch of 4 rows, 2 per rank; rank 0's row 0 and rank 1's row 0 share the positive "pA".
    positives = [["pA", "pB"], ["pA", "pC"]][rank]
    queries = [["q0", "q1"], ["q2", "q3"]][rank]
    negatives = [["n0", "n1"], ["n2", "n3"]][rank]
    vocab = {t: i for i, t in enumerate(["pA", "pB", "pC", "n0", "n1", "n2", "n3"])}
    q = torch.stack([torch.eye(8)[vocab[t]] for t in positives])  # perfect: each query embeds as its positive
    d = torch.stack([torch.eye(8)[vocab[t]] for t in positives + negatives])
    kw = dict(q_hash=torch.from_numpy(text_hashes(queries)), d_hash=torch.from_numpy(text_hashes(positives + negatives)),
              symmetric=torch.zeros(2, dtype=torch.bool))
    ib = torch.ones(2, dtype=torch.bool)
    losses = [float(info_nce(q, d, ib, 1, 0.01)), float(info_nce(q, d, ib, 1, 0.01, **kw))]
    torch.save(losses, f"{out}/rank{rank}.pt")
    # Both ranks reach teardown together: a rank that destroys gloo while the other still runs its last
    # collective can abort the other ("terminate called without an active exception", seen once in CI).
    dist.barrier()
    dist.destroy_process_group()


def test_duplicates_are_masked_across_ranks(tmp_path):
    """The twin positive sits on the other rank: the gathered text hashes still mask it."""
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_loss, args=(f"file://{tmp_path}/pg", str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        plain, masked = torch.load(tmp_path / f"rank{rank}.pt")
        assert plain > 0.3 and masked < 1e-6, (rank, plain, masked)  # two of four rows paid log 2
