"""Which patch tokens a pretraining objective hides: random, clustered (SSAST) or block (ASiT) masks.

Every mask function returns index tensors ``(ids_masked [B, M], ids_keep [B, N - M])``
(``block_mask`` adds which masked tokens get another clip's content), each row
sorted, with the same ``M`` for every clip so that the masked tokens of a batch
stack into one tensor. Tokens are numbered frequency-major on the
encoder's ``(n_f, n_t)`` grid (``index = f * n_t + t``); frame tokens have
``n_f = 1``, so a cluster or block there is a contiguous run in time.

Cluster and block masks are drawn without a Python loop: each clip gets a
sequence of random regions; a token's rank is the index of the first region
covering it plus a uniform tie-breaker, and the ``M`` lowest ranks are masked.
That is "add regions until the count is reached", with the last region cut at
random, and tokens no region covers are drawn at random if the regions run out.
Randomness comes only from ``generator`` (or the global RNG when it is None);
pass a generator on the data's device to avoid host-device copies on CUDA.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from edgeast.config import ConfigError


def mask_count(num_patches: int, mask_ratio: float, count: int | None = None) -> int:
    """Masked tokens per clip: ``count`` if given, else ``round(mask_ratio * num_patches)``."""
    masked = count if count is not None else round(mask_ratio * num_patches)
    if not 2 <= masked < num_patches:
        raise ConfigError(
            f"mask count {masked} (mask_ratio={mask_ratio}, mask_count={count}) must be in [2, {num_patches - 1}] "
            f"for an encoder with {num_patches} patches: change the mask ratio/count or the input size"
        )
    return masked


def random_mask(
    batch: int,
    num_patches: int,
    num_masked: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask ``num_masked`` tokens per clip uniformly at random (SSAST frame / MAE-AST masking)."""
    noise = _uniform((batch, num_patches), generator, device)
    return _split(noise, num_masked)


def cluster_mask(
    batch: int,
    grid: tuple[int, int],
    num_masked: int,
    *,
    sizes: tuple[int, int] = (3, 5),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """SSAST cluster masking: squares of side ``c`` (one ``c`` per clip, drawn from ``sizes``
    inclusive) centred on random seed patches, clipped at the grid edges, until
    ``num_masked`` tokens are covered. On a frame grid (n_f = 1) the squares are runs of ``c``."""
    n_f, n_t = grid
    low, high = sizes
    if not 1 <= low <= high:
        raise ConfigError(f"cluster sizes {sizes}: expected 1 <= min <= max")
    smallest = min(low, n_f) * min(low, n_t)
    num_regions = math.ceil(3 * n_f * n_t / smallest)  # expected uncovered share ~ e^-3
    side = low + (_uniform((batch, 1), generator, device) * (high - low + 1)).long()  # [B, 1]
    centre_f = (_uniform((batch, num_regions), generator, device) * n_f).long()  # [B, K]
    centre_t = (_uniform((batch, num_regions), generator, device) * n_t).long()
    first = _first_region(grid, centre_f - side // 2, side, centre_t - side // 2, side)
    return _split(first + _uniform(first.shape, generator, device), num_masked)


def block_mask(
    batch: int,
    grid: tuple[int, int],
    num_masked: int,
    *,
    max_block: float = 0.3,
    alien_prob: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """ASiT/GMML group masking: random rectangles of 1..``max_block`` of the grid along each
    axis, top-left corner uniform, until ``num_masked`` tokens are covered.

    Also returns ``alien [B, M]`` bool: each rectangle is, with probability ``alien_prob``,
    one to fill with another clip's content (the rest get noise), whole rectangles at once.
    """
    n_f, n_t = grid
    max_f, max_t = max(1, round(max_block * n_f)), max(1, round(max_block * n_t))
    mean_area = (1 + max_f) / 2 * (1 + max_t) / 2
    num_regions = math.ceil(3 * n_f * n_t / mean_area)
    shape = (batch, num_regions)
    height = 1 + (_uniform(shape, generator, device) * max_f).long()
    width = 1 + (_uniform(shape, generator, device) * max_t).long()
    top = (_uniform(shape, generator, device) * n_f).long()
    left = (_uniform(shape, generator, device) * n_t).long()
    first = _first_region(grid, top, height, left, width)
    ids_masked, ids_keep = _split(first + _uniform(first.shape, generator, device), num_masked)
    alien_region = _uniform((batch, num_regions + 1), generator, device) < alien_prob  # last: uncovered leftovers
    return ids_masked, ids_keep, alien_region.gather(1, first.gather(1, ids_masked))


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """Rows ``ids [B, M]`` of ``x [B, N, D]`` -> ``[B, M, D]``."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def ids_to_mask(ids: Tensor, num_patches: int) -> Tensor:
    """Index tensor ``[B, M]`` -> boolean ``[B, N]``, True at the given tokens."""
    return torch.zeros(ids.shape[0], num_patches, dtype=torch.bool, device=ids.device).scatter_(1, ids, True)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def _first_region(grid: tuple[int, int], top: Tensor, height: Tensor, left: Tensor, width: Tensor) -> Tensor:
    """Index of the first rectangle ``[top, top+height) x [left, left+width)`` (each ``[B, K]``)
    covering each token -> ``[B, N]`` long, ``K`` where none does."""
    n_f, n_t = grid
    batch, num_regions = top.shape
    f = torch.arange(n_f, device=top.device)
    t = torch.arange(n_t, device=top.device)
    in_f = (f >= top[..., None]) & (f < (top + height)[..., None])  # [B, K, n_f]
    in_t = (t >= left[..., None]) & (t < (left + width)[..., None])  # [B, K, n_t]
    covered = (in_f[..., :, None] & in_t[..., None, :]).reshape(batch, num_regions, n_f * n_t)
    region = torch.arange(num_regions, device=top.device)[None, :, None]
    return torch.where(covered, region, num_regions).amin(dim=1)


def _split(rank: Tensor, num_masked: int) -> tuple[Tensor, Tensor]:
    """The ``num_masked`` lowest-ranked tokens are masked; both index sets come back sorted."""
    order = rank.argsort(dim=1)
    return order[:, :num_masked].sort(dim=1).values, order[:, num_masked:].sort(dim=1).values
