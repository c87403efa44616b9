"""Mini-batches in a reproducible order, with a position that a checkpoint can hold and restore."""
from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

# An epoch's shuffle is one int64 permutation, 8 bytes an item (16 GiB at this bound), and for
# tensor data a second copy on the device; a plugin's len() of 10**12 must fail here, not in randperm.
MAX_ITEMS = 2**31 - 1


def check_size(n: int) -> None:
    """Raise ValueError if an epoch of n items is too many to shuffle: more than MAX_ITEMS, or a
    permutation bigger than half this machine's memory (Linux may kill the process, not raise)."""
    if n > MAX_ITEMS:
        raise ValueError(f"{n:,} items; at most {MAX_ITEMS:,} can be trained on, since each epoch's "
                         f"shuffle is a permutation of 8 bytes per item ({_gib(n)} here)")
    mem = _memory()
    if mem and 8 * n > mem // 2:
        raise ValueError(f"{n:,} items; each epoch's shuffle is a permutation of 8 bytes per item "
                         f"({_gib(n)}), more than half of this machine's {mem / 2**30:,.1f} GiB of memory")


def _memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def _gib(n_items: int) -> str:
    return f"{8 * n_items / 2**30:,.1f} GiB"


class Batches:
    """Each epoch is one permutation drawn from a generator seeded by (seed, epoch).

    The position is (epoch, offset in samples), so the batch size may change mid-epoch and a
    restored run draws exactly the batches the straight run would have drawn. A short last batch
    ends the epoch. A batch that would leave exactly one sample in the epoch takes it too (when
    batch_size > 1, it has batch_size + 1 items and ends the epoch): BatchNorm cannot train on a batch of one, and the
    engine would retry that batch forever. next and skip share this rule through _end.
    """

    def __init__(self, dataset: Dataset, seed: int, device: torch.device):
        self.dataset, self.seed, self.device = dataset, seed, device
        self.n = len(dataset)
        check_size(self.n)
        # Tensor datasets are indexed directly on the device: no per-sample Python on the hot path.
        self.tensors = None
        if isinstance(dataset, TensorDataset):
            self.tensors = [t.to(device) for t in dataset.tensors]
        self.generator = torch.Generator()
        self.epoch, self.offset, self.batch_index = 0, 0, 0
        self.size = 0  # the last batch's size (all of it, when next() loaded one rank's part)
        self._perm = self._permutation()

    def _permutation(self) -> torch.Tensor:
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        try:
            perm = torch.randperm(self.n, generator=self.generator)
            # Tensor data is indexed where it lives: one copy per epoch, not a host-to-device copy per step.
            if self.tensors is None or self.device.type == "cpu":
                return perm
            return perm.pin_memory().to(self.device, non_blocking=True)  # no sync: the copy is queued
        except (RuntimeError, MemoryError) as e:  # torch's out-of-memory errors are RuntimeErrors
            raise ValueError(f"train_data: cannot shuffle the {self.n:,} items of an epoch: "
                             f"{_gib(self.n)} did not fit ({type(e).__name__}: {e})") from e

    def _end(self, batch_size: int) -> int:
        """Where the batch starting at the current offset ends: a lone sample left over joins it."""
        end = min(self.offset + batch_size, self.n)
        return self.n if batch_size > 1 and self.n - end == 1 else end

    def batches_per_epoch(self, batch_size: int) -> int:
        """The number of batches in a whole epoch (from offset 0) at this batch size."""
        full, rest = divmod(self.n, batch_size)
        if rest == 1 and batch_size > 1 and full:  # the lone sample joined the last full batch
            return full
        return full + (rest > 0)

    def next(self, batch_size: int, part: tuple[int, int] | None = None) -> tuple[object, bool]:
        """Return (batch, epoch_ended). With part=(rank, world), only that rank's contiguous slice of the
        batch is loaded; `size` is the whole batch's."""
        end = self._end(batch_size)
        idx = self._perm[self.offset:end]
        self.size = len(idx)
        if part is not None:
            rank, world = part
            idx = idx[rank * self.size // world:(rank + 1) * self.size // world]
        self.offset = end
        self.batch_index += 1
        if self.tensors is not None:
            batch = [t[idx] for t in self.tensors]
        else:
            batch = _to(default_collate([self.dataset[i] for i in idx.tolist()]), self.device)
        ended = self.offset >= self.n
        if ended:
            self.epoch, self.offset, self.batch_index = self.epoch + 1, 0, 0
            self._perm = self._permutation()
        return batch, ended

    def skip(self, k: int, batch_size: int) -> int:
        """Skip k batches without loading them (the PaLM recipe after a loss spike); returns epochs ended."""
        ended = 0
        for _ in range(k):
            self.offset = self._end(batch_size)
            self.batch_index += 1
            if self.offset >= self.n:
                self.epoch, self.offset, self.batch_index = self.epoch + 1, 0, 0
                self._perm = self._permutation()
                ended += 1
        return ended

    def position(self) -> tuple[int, int, int]:
        return self.epoch, self.offset, self.batch_index

    def seek(self, pos: tuple[int, int, int]) -> None:
        """Go back to a position from position(), e.g. to undo a failed step."""
        if pos[0] != self.epoch:
            self.epoch = pos[0]
            self._perm = self._permutation()
        self.epoch, self.offset, self.batch_index = pos

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "batch_index": self.batch_index,
                "seed": self.seed, "generator": self.generator.get_state()}

    def load_state(self, s: dict) -> None:
        self.epoch, self.offset, self.batch_index = int(s["epoch"]), int(s["offset"]), int(s["batch_index"])
        self._perm = self._permutation()
        self.generator.set_state(s["generator"])


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def all_batches(dataset: Dataset, batch_size: int, device: torch.device, limit: int | None = None):
    """Evaluation order: the dataset as it is, in fixed batches, optionally the first `limit` items."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if isinstance(dataset, TensorDataset):
        for i in range(0, n, batch_size):
            yield [t[i:min(i + batch_size, n)].to(device) for t in dataset.tensors]
    else:
        for i in range(0, n, batch_size):
            yield _to(default_collate([dataset[j] for j in range(i, min(i + batch_size, n))]), device)
