"""``max_rows``: a seeded uniform sample of a dataset's examples in bounded memory.

Each example gets the key ``hash64(f"{seed}:{id}")`` (its id is a hash of its content), and the
``max_rows`` examples with the smallest keys are kept (bottom-k sampling): the same content and
seed give the same sample whatever the batch sizes or file order, and memory holds at most
``2 * max_rows`` examples. The sample is written in input order.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kalm.minhash import hash64


class Sampler:
    def __init__(self, k: int, seed: int):
        self.k, self.seed = k, seed
        self._tables: list[pa.Table] = []
        self._rows = 0
        self._order = 0
        self.seen = 0

    def add(self, table: pa.Table) -> None:
        n = table.num_rows
        if n == 0:
            return
        keys = hash64(f"{self.seed}:{i}" for i in table.column("id").to_pylist())
        table = table.append_column("_key", pa.array(keys)).append_column(
            "_order", pa.array(np.arange(self._order, self._order + n, dtype=np.int64)))
        self._order += n
        self.seen += n
        self._tables.append(table)
        self._rows += n
        if self._rows > 2 * self.k:
            self._shrink()

    def _shrink(self) -> None:
        t = pa.concat_tables(self._tables)
        if t.num_rows > self.k:
            keys = t.column("_key").to_numpy()
            idx = np.argpartition(keys, self.k - 1)[:self.k]
            t = t.take(pa.array(np.sort(idx)))
        self._tables, self._rows = [t], t.num_rows

    def result(self) -> Optional[pa.Table]:
        """The kept examples in input order (without the helper columns)."""
        if not self._tables:
            return None
        self._shrink()
        t = self._tables[0]
        t = t.take(pc.sort_indices(t, [("_order", "ascending")]))
        return t.drop_columns(["_key", "_order"])
