"""Streaming a packed split as whole batches: an exact once-per-epoch cover, equal batch counts per DDP rank,
and resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from geotrainr.data.dataset import collate_skip
from geotrainr.data.packed.location import PackError
from geotrainr.data.packed.reader import PackedDataset


def batch_bounds(n: int, batch_size: int, batches: int) -> np.ndarray:
    """``batches + 1`` boundaries cutting ``n`` rows into exactly ``batches`` non-empty batches, each near ``batch_size``."""
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]  # no batch of one image (BatchNorm cannot train on it): the last batch takes it
    while len(bounds) - 1 > batches:  # more than the other ranks: merge the last two
        del bounds[-2]
    while len(bounds) - 1 < batches:  # fewer: split the largest batch
        sizes = np.diff(bounds)
        k = int(np.argmax(sizes))
        bounds.insert(k + 1, bounds[k] + int(sizes[k]) // 2)
    return np.asarray(bounds, np.int64)


def natural_batches(n: int, batch_size: int) -> int:
    """Batches of ``n`` rows cut every ``batch_size``, a last batch of one image joined to the one before."""
    k = -(-n // batch_size)
    return k - 1 if k > 1 and n % batch_size == 1 else k


def batches_per_rank(n: int, world: int, batch_size: int) -> int:
    """The batch count every rank gets: what the largest share needs, or fewer when the smallest share has fewer rows.

    Equal counts keep DDP's collectives in step; no row is dropped or repeated to get them.
    """
    small, large = n // world, -(-n // world)
    if small == 0:
        raise PackError(f"{n} rows cannot be shared among {world} processes: every process needs at least one")
    return min(natural_batches(large, batch_size), small)


class ShardStream(IterableDataset):
    """Whole training batches from a packed split, disjoint across DDP ranks and loader workers.

    Set :attr:`epoch`, :attr:`rank`, :attr:`world` and :attr:`skip` before iterating (``StreamLoader`` does).
    """

    def __init__(self, dataset: PackedDataset, batch_size: int, seed: int, shuffle: bool = True):
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        self.epoch, self.rank, self.world = 0, 0, 1
        self.skip: frozenset[int] = frozenset()
        self._prepared: tuple | None = None

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        return batches_per_rank(len(self.dataset), self.world, self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Positions (into the split) in this epoch's order: row groups permuted, then shuffled within windows."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        groups = self.dataset.packed.group_of(self.dataset.rows)
        uniq, inverse = np.unique(groups, return_inverse=True)
        rank_of_group = np.empty(len(uniq), np.int64)
        rank_of_group[rng.permutation(len(uniq))] = np.arange(len(uniq))
        pos = np.argsort(rank_of_group[inverse], kind="stable")
        # a window of (buffer - 1) row groups' rows spans at most `buffer` row groups: each worker's reads fit its buffer
        window = max(1, (self.dataset.packed.buffer - 1) * self.dataset.packed.rows_per_group)
        key = (np.arange(n) // window) + rng.random(n)
        return pos[np.argsort(key, kind="stable")]

    def plan(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch``, as positions into the split."""
        rows, bounds = self._plan_arrays(epoch)
        return [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _plan_arrays(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's positions of ``epoch`` in batch order, and the batch boundaries."""
        if self._prepared is not None and self._prepared[0] == (epoch, self.rank, self.world):
            return self._prepared[1], self._prepared[2]
        n = len(self.dataset)
        order = self.order(epoch)
        mine = order[self.rank * n // self.world:(self.rank + 1) * n // self.world].copy()
        return mine, batch_bounds(len(mine), self.batch_size, len(self))

    def prepare(self) -> None:
        """Compute this epoch's plan once, in the loader's own process: forked workers share it instead of each
        sorting the whole split again (a million rows cost about 50 MB of temporaries per sort)."""
        self._prepared = None
        self._prepared = ((self.epoch, self.rank, self.world), *self._plan_arrays(self.epoch))

    def worker_blocks(self, batches: int, workers: int) -> list[range]:
        """Contiguous runs of batch numbers per loader worker (each worker reads its own row groups)."""
        edges = [batches * w // workers for w in range(workers + 1)]
        return [range(edges[w], edges[w + 1]) for w in range(workers)]

    def __iter__(self) -> Iterator[dict]:

        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rows, bounds = self._plan_arrays(self.epoch)
        for b in self.worker_blocks(len(bounds) - 1, workers)[wid]:
            if b in self.skip:
                continue
            batch = collate_skip([self.dataset[int(i)] for i in rows[bounds[b]:bounds[b + 1]]])
            batch["stream_batch"] = b
            yield batch


class StreamLoader(DataLoader):
    """The train loader of a packed set: sets the stream's epoch, rank and resume point before each pass.

    Workers are started afresh every epoch (``persistent_workers`` off) so that each sees its epoch's plan.
    Its state is which batches of the epoch the model has had, counted by the datamodule as batches reach
    the model (not as workers prefetch them); the checkpoint carries it (the datamodule's and this loader's
    ``state_dict``, one state) and a resumed run leaves those batches out.
    """

    def __init__(self, stream: ShardStream, epoch: Callable[[], int], resume: Callable[[int, int], frozenset],
                 state: Callable[[], dict], restore: Callable[[dict], None], **kwargs):
        super().__init__(stream, batch_size=None, persistent_workers=False, **kwargs)
        self._epoch, self._resume, self._state, self._restore = epoch, resume, state, restore

    def __iter__(self):
        stream = self.dataset
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            stream.rank, stream.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        stream.epoch = int(self._epoch())
        stream.skip = self._resume(stream.epoch, stream.world)
        stream.prepare()
        return super().__iter__()

    def __len__(self) -> int:
        stream = self.dataset
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            stream.world = torch.distributed.get_world_size()
        return len(stream)

    def state_dict(self) -> dict:
        return self._state()

    def load_state_dict(self, state_dict: dict) -> None:
        self._restore(state_dict)
