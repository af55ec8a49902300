"""Pretraining step time and peak memory: SSAST vs MAE-AST vs ASiT on the same encoder.

MAE-AST reports ~3x faster steps and ~2x less memory than SSAST because its
encoder only runs on the 25% unmasked patches. This measures one training step
(forward + backward + AdamW step, + the EMA update for ASiT) for each
objective on the papers' input, 128 mel x 1024 frames = 512 patches of 16x16,
and prints a markdown table with ratios against SSAST. Next to the times it
prints each step's arithmetic (forward + backward FLOPs of one clip, counted by
torch): their ratio is the most speed-up that equally efficient kernels can
show, so it says whether a gap to the paper is in the kernels or in the model.

Each objective runs in its own subprocess so that peak memory is its own:
on CUDA ``torch.cuda.max_memory_allocated``, on CPU the peak resident set size
(``ru_maxrss``, with glibc told to return freed blocks). Two figures: the
whole peak (CUDA only: a CPU process's resident set also holds the runtime's
caches), and the peak of a training step above the steady state (weights,
AdamW state, gradients), which is the activation memory that masking saves
and that dominates at large batches.

    python bench/pretrain_speed.py                           # CPU: tiny encoder, batch 2
    python bench/pretrain_speed.py --device cuda --bf16      # CUDA: base encoder, batch 24
    python bench/pretrain_speed.py --attention math          # unfused attention, as the papers' code ran

``--attention math`` restricts ``scaled_dot_product_attention`` to its reference
kernel, which materializes each N x N attention matrix as the papers' fairseq/timm
code did (measured: it moves the ratio little; bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeast.config import apply_overrides  # noqa: E402
from edgeast.engine.distributed import allow_tf32  # noqa: E402
from edgeast.models.ast import ast_config  # noqa: E402
from edgeast.models.objectives import OBJECTIVES, build_objective  # noqa: E402
from edgeast.models.profile import count_step_flops  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default=None, help="encoder size (default: tiny on CPU, base on CUDA)")
    parser.add_argument("--batch", type=int, default=None, help="clips per step (default: 2 on CPU, 24 on CUDA)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (more with --compile)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternate the objectives this many times, keep each one's fastest round"
    )
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--mel", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the objective module")
    parser.add_argument(
        "--attention",
        choices=("fused", "math"),
        default="fused",
        help="fused: the fastest SDPA kernel available (as training runs); math: the unfused reference kernel",
    )
    parser.add_argument("--objectives", default=",".join(OBJECTIVES), help="comma-separated, ssast first for ratios")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OBJECTIVE.KEY=VALUE",
        help="objective config override, e.g. maeast.decoder_dim=384 (repeatable)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: measure one objective
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1 (the first step sets the steady state)")
    on_cuda = args.device.startswith("cuda")
    args.size = args.size or ("base" if on_cuda else "tiny")
    args.batch = args.batch or (24 if on_cuda else 2)
    return args


def _memory_mib(device: torch.device) -> float:
    """Memory held now: CUDA allocations, or this process's resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(args: argparse.Namespace) -> dict:
    """Build one objective, run warmup + timed steps, return its figures (runs in a subprocess)."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        allow_tf32()  # as the engine trains
    encoder_cfg = ast_config(args.size, num_mel_bins=args.mel, num_frames=args.frames)
    overrides = apply_overrides({}, args.set).get(args.worker, {})
    model = build_objective(args.worker, encoder_cfg, overrides).to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type in ("cuda", "cpu"))  # as the engine
    forward = torch.compile(model) if args.compile else model
    features = torch.randn(args.batch, args.frames, args.mel, device=device)
    total_steps = args.warmup + args.steps
    attention = (lambda: sdpa_kernel(SDPBackend.MATH)) if args.attention == "math" else contextlib.nullcontext

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for step in range(total_steps):
        if step == args.warmup:  # steady state: weights, AdamW state, last gradients
            sync()
            steady = _memory_mib(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
        sync()
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16), attention():
            loss, _ = forward(features)
        loss.backward()  # each kernel's backward was chosen with its forward
        optimizer.step()
        if hasattr(model, "after_optimizer_step"):
            model.after_optimizer_step(step, total_steps)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - began)
    peak = _peak_mib(device)  # on CPU a lifetime peak, but warmup steps peak like timed ones
    optimizer.zero_grad(set_to_none=True)  # after the peak: counting runs unfused attention on one clip
    flops = count_step_flops(lambda: model(features[:1])[0])  # the arithmetic, whatever the kernels
    return {
        "objective": args.worker,
        "step_ms": 1000 * statistics.median(times),
        "gflop": flops / 1e9,
        "peak_mib": peak if device.type == "cuda" else None,  # CPU RSS also holds the runtime's caches
        "step_peak_mib": max(peak - steady, 0.0),
        "patches": model.encoder.num_patches,
        "encoder_tokens": model.encoder.num_patches - (model.num_masked if args.worker == "maeast" else 0),
        "trainable_m": sum(p.numel() for p in trainable) / 1e6,
        "encoder_m": sum(p.numel() for p in model.encoder.parameters()) / 1e6,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args)))
        return
    passed = sys.argv[1:] if argv is None else argv
    names = args.objectives.split(",")
    for name in names:
        if name not in OBJECTIVES:
            raise SystemExit(f"--objectives: unknown objective {name!r} (expected {', '.join(OBJECTIVES)})")
    # glibc keeps freed heap memory resident; with every block over 64 KiB mmap-ed, RSS follows live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    best: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for _ in range(args.rounds):  # alternating rounds even out load from other processes
        for name in names:
            if name in failed:
                continue
            command = [sys.executable, __file__, *passed, "--worker", name]
            run = subprocess.run(command, capture_output=True, text=True, env=env)
            if run.returncode != 0:  # report it and go on: one objective's failure says nothing of the others'
                print(f"{name} failed:\n{run.stderr[-3000:]}", file=sys.stderr)
                failed[name] = (run.stderr.strip().splitlines() or ["no message"])[-1][:160]
                continue
            result = json.loads(run.stdout.strip().splitlines()[-1])
            if name not in best or result["step_ms"] < best[name]["step_ms"]:
                best[name] = result
    if names[0] in failed:
        raise SystemExit(f"{names[0]} (the reference) failed: {failed[names[0]]}")
    results = [best[name] for name in names if name in best]

    reference = results[0]
    precision = "bf16 autocast" if args.bf16 else "fp32"
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    print(f"command: `{threads}{shlex.join(['python', 'bench/pretrain_speed.py', *passed])}`")
    print(
        f"device {args.device} (torch {torch.__version__}, {reference['threads']} threads), encoder {args.size} "
        f"({reference['encoder_m']:.1f}M params), input {args.mel} mel x {args.frames} frames = {reference['patches']} patches, "
        f"batch {args.batch}, {precision}{', torch.compile' if args.compile else ''}, {args.attention} attention, "
        f"median of {args.steps} steps after {args.warmup} warmup, best of {args.rounds} rounds\n"
    )
    ref = reference["objective"]
    print(
        f"| objective | patches in encoder | trainable params | GFLOP per clip | FLOP ratio vs {ref} "
        f"| step ms | speed-up vs {ref} "
        f"| peak MiB | vs {ref} | step activations MiB | vs {ref} |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        if r["peak_mib"] is None:
            peak = "- | -"
        else:
            peak = f"{r['peak_mib']:.0f} | {r['peak_mib'] / reference['peak_mib']:.2f}x"
        print(
            f"| {r['objective']} | {r['encoder_tokens']} | {r['trainable_m']:.1f}M | {r['gflop']:.1f} "
            f"| {reference['gflop'] / r['gflop']:.2f}x | {r['step_ms']:.0f} "
            f"| {reference['step_ms'] / r['step_ms']:.2f}x | {peak} "
            f"| {r['step_peak_mib']:.0f} | {r['step_peak_mib'] / reference['step_peak_mib']:.2f}x |"
        )
    for name, message in failed.items():
        print(f"| {name} | failed: {message.replace('|', '/')} | | | | | | | | | |")
    print(
        "\nGFLOP per clip: one clip's forward + backward as torch's FlopCounterMode counts it (matrix products, "
        f"attention's included); FLOP ratio vs {ref}: the most speed-up that kernels running both steps equally "
        "efficiently can show. peak MiB: CUDA max_memory_allocated of the whole run (weights, gradients, AdamW state, activations); "
        "not shown on CPU, where the resident set also holds the runtime's own caches. step activations MiB: the "
        "peak of a training step above the steady state of weights, AdamW state and gradients (CPU: peak RSS)."
    )


if __name__ == "__main__":
    main()
