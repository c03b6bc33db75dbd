"""`EncodedRows`: tokenised examples read from an Arrow file on demand, so memory stays flat in the row count.

The training code takes any `Sequence[Encoded]`; this one holds only
- the memory-mapped `datasets.Dataset` (the OS pages rows in and out),
- `indices` (int64, one per kept example: 8 bytes a row) into it, after subsampling and dropping,
- `lengths` (int32, from the `length` column, never from the rows), which batch_order sorts by.

`rows[i]` builds one `Encoded` from one Arrow row; a batch touches only its own rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lorafit.data.batches import Encoded


class EncodedRows(Sequence):
    """A read-only sequence of `Encoded` backed by an Arrow table (see the module docstring)."""

    def __init__(self, dataset, indices: np.ndarray | None = None):
        self.dataset = dataset
        all_lengths = np.asarray(dataset.data.column("length").to_numpy(), dtype=np.int32) if len(dataset) else np.zeros(0, np.int32)
        self.indices = np.arange(len(dataset), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        self.lengths = all_lengths[self.indices]  # (n,) int32
        names = set(dataset.column_names)
        self._labels = "labels" in names
        self._types = "token_type_ids" in names
        self._target = "target" in names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        row = self.dataset[int(self.indices[i])]
        return Encoded(
            input_ids=tuple(row["input_ids"]),
            labels=tuple(row["labels"]) if self._labels else None,
            token_type_ids=tuple(row["token_type_ids"]) if self._types else None,
            target=row["target"] if self._target else None,
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def column(self, name: str) -> np.ndarray:
        """A per-row scalar column (length, truncated, dropped, row) for the kept examples."""
        return np.asarray(self.dataset.data.column(name).to_numpy())[self.indices]

    def subset(self, positions: np.ndarray) -> EncodedRows:
        """The examples at `positions` (of this sequence), still lazy."""
        return EncodedRows(self.dataset, self.indices[np.asarray(positions, dtype=np.int64)])
