"""Task batch sampling: semi-homogeneous (KaLM), fully homogeneous, or random.

KaLM's scheme (from its released scripts): build single-task global batches, then take the
last ⌊B·(1−r)⌋ slots of every batch, shuffle those across batches and put them back. Each
batch is then mostly (share r) one task, which keeps in-batch negatives hard, while the mixed
slots regularise. r = 1 gives fully homogeneous batches; ``random`` ignores tasks.

With example lengths given, batches are also grouped by length (as transformers'
``LengthGroupedSampler`` does): after shuffling, each window of ``length_window`` batches'
worth of examples is sorted by length before it is cut into batches, so a batch pads to
little more than its own texts; the batches are shuffled afterwards, so long and short
batches still alternate through the epoch.

The sampler is deterministic from (seed, epoch) and the lengths; its state is (epoch,
position), saved in checkpoints. Task ids, lengths and an epoch's batches are numpy arrays
(4-8 bytes per example), never Python lists of the whole dataset. Every rank builds the same global batches and takes its own slice.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from kalm.errors import DataError


class TaskBatchSampler:
    """Yields global batches (lists of example indices) forever, epoch after epoch.

    Args:
        tasks: the task key of each example (e.g. task type + source).
        batch_size: global batch size B.
        mode: ``semi_homogeneous``, ``homogeneous`` or ``random``.
        share: r, the share of each semi-homogeneous batch drawn from one task.
        seed: base seed; epoch e uses ``seed + e``.
        lengths: optional length of each example (e.g. tokens of its longest text); turns on
            length grouping.
        length_window: batches per length-sorted window (larger: less padding, less randomness).

    Example::

        sampler = TaskBatchSampler(["sts", "sts", "cls", "cls"], batch_size=2, mode="homogeneous")
        batch = sampler.next_batch()        # two indices of the same task
        state = sampler.state_dict()        # {"epoch": 0, "position": 1}
    """

    def __init__(self, tasks: Sequence[Any] | np.ndarray, batch_size: int, mode: str = "semi_homogeneous",
                 share: float = 0.8, seed: int = 0, lengths: Optional[Sequence[int] | np.ndarray] = None,
                 length_window: int = 50):
        if len(tasks) < batch_size:
            raise DataError(f"{len(tasks)} examples are fewer than one batch of {batch_size}: lower train.batch_size")
        if mode not in ("semi_homogeneous", "homogeneous", "random"):
            raise ValueError(f"sampler mode {mode!r}: use semi_homogeneous, homogeneous or random")
        # Task ids as one int array (sorted names -> 0..T-1): memory stays 4 bytes per example.
        self.task_names, self.tasks = np.unique(np.asarray(tasks), return_inverse=True)
        self.tasks = self.tasks.astype(np.int32).reshape(-1)
        self.batch_size = batch_size
        self.mode = mode
        self.share = 1.0 if mode == "homogeneous" else share
        self.seed = seed
        if lengths is not None and len(lengths) != len(self.tasks):
            raise ValueError(f"{len(lengths)} lengths for {len(self.tasks)} examples: give one length per example")
        self.lengths = np.asarray(lengths, dtype=np.int64) if lengths is not None else None
        self.length_window = max(1, length_window)
        self.epoch = 0
        self.position = 0
        self._batches = self.epoch_batches(0)

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """The global batches of ``epoch``: int64 [num_batches, batch_size] example indices."""
        rng = np.random.default_rng([self.seed, epoch])
        B, n = self.batch_size, len(self.tasks)
        if self.mode == "random":
            order = rng.permutation(n)
            full = n // B * B
            if self.lengths is None:
                return order[:full].reshape(-1, B)
            batches = self._length_grouped(order[:full])
            rng.shuffle(batches)
            return batches
        order = rng.permutation(n)
        by_task = order[np.argsort(self.tasks[order], kind="stable")]  # shuffled within each task
        bounds = np.searchsorted(self.tasks[by_task], np.arange(len(self.task_names) + 1))
        parts, leftovers = [], []
        for t in range(len(self.task_names)):
            idx = by_task[bounds[t]:bounds[t + 1]]
            full = len(idx) // B * B
            parts.append(self._length_grouped(idx[:full]) if self.lengths is not None else idx[:full].reshape(-1, B))
            leftovers.append(idx[full:])
        # Tasks smaller than a batch still train: their examples form mixed batches.
        left = rng.permutation(np.concatenate(leftovers))
        parts.append(left[:len(left) // B * B].reshape(-1, B))
        batches = np.concatenate(parts)
        mixed = math.floor(B * (1 - self.share))
        if mixed > 0 and len(batches) > 1:
            tail = batches[:, B - mixed:].reshape(-1).copy()
            rng.shuffle(tail)
            if self.lengths is not None:
                # The mixed slots go to batches of like length, or one long text would undo the grouping.
                head_len = self.lengths[batches[:, :B - mixed]].max(axis=1)
                slot = np.empty(len(batches), dtype=np.int64)
                slot[np.argsort(head_len, kind="stable")] = np.arange(len(batches))
                tail = tail[np.argsort(self.lengths[tail], kind="stable")]
            else:
                slot = np.arange(len(batches))
            batches[:, B - mixed:] = tail.reshape(len(batches), mixed)[slot]
        rng.shuffle(batches)
        return batches

    def _length_grouped(self, order: np.ndarray) -> np.ndarray:
        """``order`` (a multiple of B long) cut into batches of like length, window by window."""
        B, w = self.batch_size, self.batch_size * self.length_window
        out = []
        for s in range(0, len(order), w):
            window = order[s:s + w]
            window = window[np.argsort(-self.lengths[window], kind="stable")]  # ties keep the shuffled order
            out.append(window.reshape(-1, B))
        return np.concatenate(out) if out else np.zeros((0, B), dtype=np.int64)

    def next_batch(self) -> list[int]:
        if self.position >= len(self._batches):
            self.epoch += 1
            self.position = 0
            self._batches = self.epoch_batches(self.epoch)
        batch = self._batches[self.position].tolist()
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._batches = self.epoch_batches(self.epoch)


def rank_slice(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's part of a global batch (contiguous, so gathered results keep batch order)."""
    if len(batch) % world_size:
        raise ValueError(f"global batch {len(batch)} is not divisible by {world_size} processes: "
                         "make train.batch_size a multiple of nproc_per_node * nnodes")
    per = len(batch) // world_size
    return batch[rank * per:(rank + 1) * per]
