"""Resumable, sharded batches of a dataset too large for memory, read by DataLoader workers.

:class:`StreamingBatches` is the streamed twin of the engine's in-memory loader and follows the
same contract: epoch ``e`` visits ``randperm(N)`` seeded by ``(seed, e)`` (:func:`epoch_order`, the
same permutation the in-memory loader uses) in global batches of ``global_batch`` (the last
incomplete batch dropped when training); process ``r`` of ``w`` takes the ``r``-th of ``w`` equal
shares of every global batch; ``state_dict()`` holds the epoch and the batches consumed, so a
checkpoint taken mid-epoch resumes at the next batch. The global batches, and hence the data
order, do not depend on the number of processes.

The items (a map-style dataset) are read by ``num_workers`` persistent DataLoader workers. Keys
are ``(epoch, index)`` for training items that draw per-image randomness (image-folder crops, see
:class:`selfsup.data.imagefolder.FolderTrainingItems`) and plain indices otherwise. A file that
cannot be read stops training with a :class:`~selfsup.errors.DataError` naming it: workers hand
the error back as a value, so no worker traceback reaches the user.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from selfsup.errors import DataError

__all__ = ["GlobalBatches", "StreamingBatches", "epoch_order", "rank_and_world"]


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch``: ``randperm(n)`` seeded by ``seed * 100003 + epoch``."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process in the default process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _Failure:
    """A DataError raised in a worker, carried back as a value (its message only)."""

    def __init__(self, message: str) -> None:
        self.message = message


class _SafeItems(torch.utils.data.Dataset):
    def __init__(self, items: Any) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.items[key]
        except DataError as exc:
            return _Failure(str(exc))


def _collate(batch: list[Any]) -> Any:
    for item in batch:
        if isinstance(item, _Failure):
            return item
    first = batch[0]
    labels = torch.tensor([item[2] if len(item) == 4 else item[-1] for item in batch])
    if len(first) == 4:  # raw bytes for decoding on the device: lists, sizes differ
        return [i[0] for i in batch], [i[1] for i in batch], labels, [i[3] for i in batch]
    if len(first) == 2:  # evaluation items: (image, label)
        return torch.stack([item[0] for item in batch]), labels
    clean = None if first[0] is None else torch.stack([item[0] for item in batch])
    crops = None if first[1] is None else torch.stack([item[1] for item in batch])
    return clean, crops, labels


class GlobalBatches:
    """The position and order of a resumable, sharded loader over ``n`` samples.

    Epoch ``e`` visits :func:`epoch_order` (or ``0..n-1`` without ``shuffle``) in global batches of
    ``global_batch`` (capped at ``n`` and the last incomplete one dropped with ``drop_last``);
    :meth:`shares` hands this process its equal share of every global batch from ``consumed`` on.
    ``state_dict()`` (epoch, batches consumed) is saved in every checkpoint by Lightning and
    restored before iterating; the engine's ``DataPosition`` callback advances it.
    """

    def __init__(
        self, n: int, global_batch: int, seed: int, shuffle: bool = True, drop_last: bool = True
    ) -> None:
        self.n = n
        self.global_batch = min(global_batch, n) if drop_last else global_batch
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.consumed = 0

    def __len__(self) -> int:
        if self.global_batch < 1:
            return 0
        if self.drop_last:
            return self.n // self.global_batch
        return math.ceil(self.n / self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        if self.consumed >= len(self):
            self.epoch, self.consumed = self.epoch + 1, 0

    def order(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The visiting order of the current epoch, on ``device``."""
        if self.shuffle:
            return epoch_order(self.n, self.seed, self.epoch).to(device)
        return torch.arange(self.n, device=device)

    def shares(self, order: torch.Tensor) -> Iterator[torch.Tensor]:
        """This process's (non-empty) share of every remaining global batch of ``order``."""
        rank, world = rank_and_world()
        for b in range(self.consumed, len(self)):
            batch = order[b * self.global_batch : min((b + 1) * self.global_batch, self.n)]
            share = batch.tensor_split(world)[rank]  # equal shares; a last partial batch too
            if share.numel():
                yield share


class _KeySampler:
    """The batch sampler: this process's key lists from the loader's current position."""

    def __init__(self, owner: StreamingBatches) -> None:
        self.owner = owner

    def __iter__(self) -> Iterator[list[Any]]:
        return self.owner.rank_keys()

    def __len__(self) -> int:
        return max(0, len(self.owner) - self.owner.consumed)


class StreamingBatches(GlobalBatches):
    """Batches of a streamed dataset; resumable mid-epoch and sharded over processes.

    ``items``: map-style dataset of length N (see the module docstring for keys and items);
    ``epoch_keys``: key items by ``(epoch, index)``; ``device`` (set by the engine): where
    ``decode == "device"`` items are decoded, and whether to pin host memory.
    """

    def __init__(
        self,
        items: Any,
        global_batch: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = True,
        num_workers: int = 2,
        epoch_keys: bool = False,
    ) -> None:
        super().__init__(len(items), global_batch, seed, shuffle, drop_last)
        self.items = items
        self.num_workers = num_workers
        self.epoch_keys = epoch_keys
        self.device: torch.device | None = None
        self._loader: DataLoader | None = None

    def rank_keys(self) -> Iterator[list[Any]]:
        """This process's share of every remaining global batch of the epoch, as item keys."""
        for share in self.shares(self.order()):
            indices = share.tolist()
            yield [(self.epoch, i) for i in indices] if self.epoch_keys else indices

    def _dataloader(self) -> DataLoader:
        if self._loader is None:
            on_cuda = self.device is not None and self.device.type == "cuda"
            self._loader = DataLoader(
                _SafeItems(self.items),
                batch_sampler=_KeySampler(self),  # type: ignore[arg-type]
                num_workers=self.num_workers,
                collate_fn=_collate,
                pin_memory=on_cuda and getattr(self.items, "decode", "workers") == "workers",
                persistent_workers=self.num_workers > 0,
            )
        return self._loader

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        from selfsup.data.augment import CroppedViews

        for batch in self._dataloader():
            if isinstance(batch, _Failure):
                raise DataError(batch.message)
            if len(batch) == 2:
                yield batch
            elif len(batch) == 4:
                from selfsup.data.imagefolder import decode_batch

                payloads, boxes, labels, indices = batch
                device = self.device or torch.device("cpu")
                clean, crops = decode_batch(self.items, payloads, boxes, indices, device)
                yield CroppedViews(clean, crops), labels.to(device)
            else:
                clean, crops, labels = batch
                yield CroppedViews(clean, crops), labels
