"""The training sampler: a pure function of (seed, epoch), sharded per rank, resumable mid-epoch.

Each epoch's order is drawn from a generator seeded by (seed, epoch) alone, so
every rank computes the same global order, takes its own stride of it, and a
resumed run can skip exactly the samples it already consumed. Randomness that
happens inside a dataset (e.g. a random crop) must follow the same rule: draw
it from `worker_rng(seed, epoch, index)`, never from global RNG state, which
differs between DataLoader worker processes and is lost on a crash.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def seed_from(*keys: int) -> int:
    """A well-mixed 63-bit seed from a tuple of non-negative integers."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def worker_rng(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator a dataset should draw sample `index`'s randomness from in `epoch`.

    The same (seed, epoch, index) gives the same draws in any worker process,
    after any crash and resume. (numpy: `np.random.default_rng([seed, epoch, index])`
    follows the same rule.)
    """
    return torch.Generator().manual_seed(seed_from(seed, epoch, index))


def class_balanced_weights(targets: Sequence[int]) -> torch.Tensor:
    """Per-sample weights 1 / count(class), so every class is drawn equally often."""
    labels = torch.as_tensor(list(targets), dtype=torch.long)
    if labels.numel() == 0:
        raise ValueError("balanced sampling: the dataset's targets are empty")
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].double()


class ResumableSampler(Sampler[int]):
    """Indices for one rank: a shuffle (or a class-balanced draw) of the whole set per epoch.

    The global order is padded by wrapping to a multiple of world_size so every
    rank gets the same number of samples (DDP needs equal step counts); rank r
    takes positions r, r + world_size, ... `set_epoch(epoch, start)` selects the
    epoch and skips its first `start` samples of this rank (resume).
    """

    def __init__(self, num_samples: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 weights: torch.Tensor | None = None) -> None:
        if num_samples < 1:
            raise ValueError("the training set is empty: nothing to sample")
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.weights = weights
        self.per_rank = -(-num_samples // world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's indices for `epoch`, from the beginning."""
        gen = torch.Generator().manual_seed(seed_from(self.seed, epoch))
        if self.weights is None:
            order = torch.randperm(self.num_samples, generator=gen)
        else:
            order = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=gen)
        total = self.per_rank * self.world_size
        padded = (order.tolist() * -(-total // self.num_samples))[:total]
        return padded[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order(self.epoch)[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start
