"""Where the engine runs: the device, the torchrun / DDP process group, and the few collectives it needs.

Under `torchrun` the environment carries WORLD_SIZE, RANK and LOCAL_RANK; the
engine joins the process group (NCCL on CUDA, gloo otherwise) and every
process drives one device. Without those variables it is one plain process.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class DeviceError(ValueError):
    """A requested device that this machine does not have."""


@dataclass
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    flag_group: object = None  # gloo group for host-side flags (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank>, else mps, else cpu; 'cuda' -> cuda:<local_rank>; explicit names as given."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device={name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device={name!r} but CUDA is not available here; use device=auto or cpu")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        if device.index >= torch.cuda.device_count():
            raise DeviceError(f"device={device} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device={name!r} but MPS is not available here; use device=auto or cpu")
    return device


def allow_tf32() -> None:
    """TF32 for float32 matmuls and convolutions on CUDA, as the engine trains."""
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True


def native_bf16(device_type: str) -> bool:
    """Whether bf16 matmuls run natively: on CUDA, or on a CPU with AVX512-BF16 or AMX (else bf16 is emulated, slower)."""
    if device_type == "cuda":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes
    return device_type == "cpu" and any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _env_int(key: str, default: int) -> int:
    raw = os.environ.get(key, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {key}={raw!r} is not an integer (set by torchrun)") from None


_FLAG_GROUPS: dict[int, object] = {}


def setup_distributed(device: str = "auto") -> DistContext:
    """Pick the device and, under torchrun, join the process group (idempotent)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank if world_size > 1 else 0)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        allow_tf32()
    if world_size == 1:
        return DistContext(device=dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=dev if backend == "nccl" else None)
        atexit.register(dist.destroy_process_group)
    if dist.get_world_size() != world_size:
        raise RuntimeError(f"the process group has {dist.get_world_size()} ranks but WORLD_SIZE={world_size}")
    key = id(dist.group.WORLD)
    if key not in _FLAG_GROUPS:
        _FLAG_GROUPS[key] = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return DistContext(rank, local_rank, world_size, dev, _FLAG_GROUPS[key])


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier(group=ctx.flag_group)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of `tensor` over all ranks (in place on the device tensor)."""
    if ctx.distributed:
        dist.all_reduce(tensor)
    return tensor


def all_ranks_agree(flag: bool, ctx: DistContext) -> bool:
    """True only if `flag` is true on every rank (a host-side collective: no GPU sync)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=ctx.flag_group)
    return bool(t.item())


def all_gather_objects(obj: object, ctx: DistContext) -> list:
    """`obj` of every rank, indexed by rank."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj, group=ctx.flag_group)
    return out


def broadcast_object(obj: object, ctx: DistContext) -> object:
    """Rank 0's `obj` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=ctx.flag_group)
    return box[0]
