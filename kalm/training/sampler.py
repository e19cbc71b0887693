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
position), saved in checkpoints. Every rank builds the same global batches and takes its own slice.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any, Optional, Sequence


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

    def __init__(self, tasks: Sequence[str], batch_size: int, mode: str = "semi_homogeneous", share: float = 0.8,
                 seed: int = 0, lengths: Optional[Sequence[int]] = None, length_window: int = 50):
        if len(tasks) < batch_size:
            raise ValueError(f"{len(tasks)} examples are fewer than one batch of {batch_size}: lower train.batch_size")
        if mode not in ("semi_homogeneous", "homogeneous", "random"):
            raise ValueError(f"sampler mode {mode!r}: use semi_homogeneous, homogeneous or random")
        self.tasks = list(tasks)
        self.batch_size = batch_size
        self.mode = mode
        self.share = 1.0 if mode == "homogeneous" else share
        self.seed = seed
        if lengths is not None and len(lengths) != len(self.tasks):
            raise ValueError(f"{len(lengths)} lengths for {len(self.tasks)} examples: give one length per example")
        self.lengths = list(lengths) if lengths is not None else None
        self.length_window = max(1, length_window)
        self.epoch = 0
        self.position = 0
        self._batches = self.epoch_batches(0)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed + epoch)
        B = self.batch_size
        if self.mode == "random":
            order = list(range(len(self.tasks)))
            rng.shuffle(order)
            if self.lengths is None:
                return [order[i:i + B] for i in range(0, len(order) - B + 1, B)]
            batches = self._length_grouped(order, len(order) // B * B)
            rng.shuffle(batches)
            return batches
        by_task: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(self.tasks):
            by_task[t].append(i)
        batches, leftovers = [], []
        for t in sorted(by_task):
            idx = by_task[t]
            rng.shuffle(idx)
            full = len(idx) // B * B
            batches += self._length_grouped(idx, full) if self.lengths is not None else \
                [idx[i:i + B] for i in range(0, full, B)]
            leftovers += idx[full:]
        # Tasks smaller than a batch still train: their examples form mixed batches.
        rng.shuffle(leftovers)
        batches += [leftovers[i:i + B] for i in range(0, len(leftovers) - B + 1, B)]
        mixed = math.floor(B * (1 - self.share))
        if mixed > 0 and len(batches) > 1:
            tail = [i for b in batches for i in b[B - mixed:]]
            rng.shuffle(tail)
            if self.lengths is not None:
                # The mixed slots go to batches of like length, or one long text would undo the grouping.
                by_len = sorted(range(len(batches)), key=lambda k: max(self.lengths[i] for i in batches[k][:B - mixed]))
                tail.sort(key=lambda i: self.lengths[i])
                slot = {k: r for r, k in enumerate(by_len)}
            else:
                slot = {k: k for k in range(len(batches))}
            batches = [b[:B - mixed] + tail[slot[k] * mixed:(slot[k] + 1) * mixed] for k, b in enumerate(batches)]
        rng.shuffle(batches)
        return batches

    def _length_grouped(self, order: list[int], n: int) -> list[list[int]]:
        """The first ``n`` of ``order`` (a multiple of B) cut into batches of like length."""
        B, w = self.batch_size, self.batch_size * self.length_window
        batches = []
        for s in range(0, n, w):
            window = sorted(order[s:min(s + w, n)], key=lambda i: -self.lengths[i])  # stable: ties keep shuffled order
            batches += [window[i:i + B] for i in range(0, len(window), B)]
        return batches

    def next_batch(self) -> list[int]:
        if self.position >= len(self._batches):
            self.epoch += 1
            self.position = 0
            self._batches = self.epoch_batches(self.epoch)
        batch = self._batches[self.position]
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
