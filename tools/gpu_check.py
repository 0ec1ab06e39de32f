"""`python -m tools.gpu_check`: step time and memory of a paper-size cell on this machine's accelerator.

Times the trainer's own optimizer step (``mtlprune.engine.train.StepRunner``) three ways on the same model
and batch:
dense, holding 90% global magnitude masks, and AdapMTL's soft thresholds with its controller. Reports steps/s,
the ratios to the dense step, and peak device memory, as JSON. Defaults are the paper setting
(Deeplab-ResNet34, NYU-v2's three tasks, 321×321, batch 16); ``--amp`` and ``--channels-last`` exercise the
GPU path. Steps are timed under the stage's determinism contract (``mtlprune.engine.determinism``: on CUDA
deterministic cuDNN without autotuning, deterministic algorithms), as ``mtlprune run`` trains;
``--nondeterministic`` times cuDNN's autotuned kernels instead, to show what that contract costs;
``--no-fill-uninitialized`` keeps the contract but turns off the NaN fill of every fresh tensor that
deterministic mode adds (``torch.utils.deterministic.fill_uninitialized_memory``, more than half the kernel
launches of a MobileNetV2-MTL step on an H200), to show what the fill costs. It runs on
a CPU too (small ``--size``/``--width`` for a quick check); the numbers then mean little.
``--repeat N`` instead trains N identical short runs and reports how far they differ: the determinism
tolerance of the device (exactly 0 on a CPU); with ``--no-fill-uninitialized``, whether the runs stay
within it without the fill.

``--json FILE`` also writes the timing to FILE, with the keys ``mtlprune plan --step-time FILE`` reads
(``seconds_per_step`` and ``peak_memory_gib`` per step kind — dense, masked, adapmtl — ``setting`` with arch,
widths, size, batch and amp, and ``device``): a measured step time turned into per-stage time, GPU-hours and
a Slurm request (docs/slurm.md).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mtlprune.engine.sparsity import select_masks
from mtlprune.engine.train import StepRunner, to_device
from mtlprune.execution.heap import keep_freed_memory
from mtlprune.plan.compute import STEP_KINDS, STEP_TIME_FORMAT
from mtlprune.registry import ARCHS, load_plugins
from mtlprune.spec import TrainSpec
from mtlprune.store import atomic_write_json

TASK_CHANNELS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}


def synthetic_batch(batch: int, size: int, device: torch.device, pin: bool) -> dict[str, torch.Tensor]:
    """A fixed NYU-v2-shaped batch, pinned in host memory when asked, copied to ``device`` non-blocking."""
    gen = torch.Generator().manual_seed(0)
    host = {
        "input": torch.randn(batch, 3, size, size, generator=gen),
        "segment_semantic": torch.randint(0, 40, (batch, size, size), generator=gen),
        "normal": torch.nn.functional.normalize(torch.randn(batch, 3, size, size, generator=gen), dim=1),
        "depth_zbuffer": torch.rand(batch, 1, size, size, generator=gen) + 0.5,
    }
    if pin and device.type == "cuda":
        host = {k: v.pin_memory() for k, v in host.items()}
    return to_device(host, device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _set(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` set to ``value`` for the block; the previous setting comes back after."""
    previous = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, previous)


def autotuned_cudnn() -> contextlib.AbstractContextManager[None]:
    """cuDNN autotunes each shape's kernel (``--nondeterministic``)."""
    return _set(torch.backends.cudnn, "benchmark", True)


def uninitialized_fill(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Whether deterministic mode fills each freshly allocated tensor with NaN (on in every stage, torch's
    default)."""
    return _set(torch.utils.deterministic, "fill_uninitialized_memory", enabled)


def time_steps(step: Callable[[int], Any], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` steps after ``warmup`` untimed ones."""
    for i in range(warmup):
        step(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    _sync(device)
    return (time.perf_counter() - start) / steps


def check(
    arch: str = "deeplab_resnet34",
    size: int = 321,
    batch: int = 16,
    steps: int = 200,
    warmup: int = 10,
    width: float = 1.0,
    head_width: float = 1.0,
    amp: str = "none",
    channels_last: bool = False,
    device: str = "auto",
    sparsity: float = 0.9,
    deterministic: bool = True,
    fill_uninitialized: bool = True,
) -> dict[str, Any]:
    from mtlprune.engine.determinism import stage_environment
    from mtlprune.methods.adapmtl import AdapMTLCallback, AdaptiveWeighting, TargetSchedule, ThresholdBank

    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu")
    )
    spec = TrainSpec(steps=steps + warmup, batch_size=batch, lr=1e-4, optimizer="adam", amp=amp)
    data = synthetic_batch(batch, size, dev, pin=True)

    def model() -> Any:
        torch.manual_seed(0)
        return ARCHS.get(arch)(TASK_CHANNELS, width=width, head_width=head_width).to(dev)

    def measure(runner: StepRunner) -> dict[str, float | None]:
        gc.collect()  # nothing of a previous variant left in the peak
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        with (
            stage_environment(dev) if deterministic else autotuned_cudnn(),
            uninitialized_fill(fill_uninitialized),
        ):
            seconds = time_steps(lambda i: runner(data, i), steps, warmup, dev)
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        return {"step_ms": seconds * 1e3, "steps_per_s": 1.0 / seconds, "peak_memory_gib": peak}

    results: dict[str, Any] = {}
    dense_model = model()
    results["dense"] = measure(StepRunner(dense_model, "nyuv2", spec, dev, channels_last=channels_last))
    # Each variant is timed, and its peak memory read, with one model alive, as in a stage: the masks are
    # taken from the dense weights, which are freed before the next model is built (and the masks after
    # the masked step).
    weights = dense_model.prunable_parameters()
    masks = select_masks({n: p.detach().abs() for n, p in weights.items()}, sparsity, "global")
    del dense_model, weights
    results["masked"] = measure(StepRunner(model(), "nyuv2", spec, dev, masks, channels_last=channels_last))
    del masks
    adap_model = model()
    bank = ThresholdBank(
        adap_model, adap_model.prunable_parameters(), adap_model.component_of, adap_model.component_of, -15.0
    )
    schedule = TargetSchedule(sparsity, 20_000, 0.125, 0.75, every=40)
    bank.solve_offset(sparsity / 2, exact=True)
    tasks = adap_model.tasks
    callback = AdapMTLCallback(
        bank, tasks, {}, AdaptiveWeighting(tasks, 0, 2, len(tasks)), schedule, freeze_at=None
    )
    bank.install()
    results["adapmtl"] = measure(
        StepRunner(adap_model, "nyuv2", spec, dev, callbacks=[callback], channels_last=channels_last)
    )
    dense_ms = results["dense"]["step_ms"]
    return {
        "format": STEP_TIME_FORMAT,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "setting": {
            "arch": arch,
            "size": size,
            "batch": batch,
            "width": width,
            "head_width": head_width,
            "amp": amp,
            "channels_last": channels_last,
            "steps": steps,
            "warmup": warmup,
            "sparsity": sparsity,
            "deterministic": deterministic,
            "fill_uninitialized": fill_uninitialized,
        },
        **results,
        "ratio_to_dense": {k: results[k]["step_ms"] / dense_ms for k in ("masked", "adapmtl")},
        # What `mtlprune plan --step-time FILE` reads: seconds per optimizer step and peak device memory per
        # step kind (None on a CPU, which has no device memory to report).
        "seconds_per_step": {k: results[k]["step_ms"] / 1e3 for k in STEP_KINDS},
        "peak_memory_gib": {k: results[k]["peak_memory_gib"] for k in STEP_KINDS},
    }


def repeatability(
    repeat: int = 2,
    arch: str = "deeplab_resnet34",
    size: int = 321,
    batch: int = 16,
    steps: int = 20,
    width: float = 1.0,
    head_width: float = 1.0,
    amp: str = "none",
    device: str = "auto",
    fill_uninitialized: bool = True,
) -> dict[str, Any]:
    """``repeat`` identical short trainings under the stage's determinism settings
    (mtlprune.engine.determinism);
    the largest difference of each run's per-step losses and final weights from the first run's.

    On a CPU both are exactly 0 (one thread per stage); on CUDA they measure the tolerance that the kernels
    without a deterministic implementation leave (docs/design.md, Determinism).
    """
    from mtlprune.engine.determinism import seed_everything, stage_environment

    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu")
    )
    spec = TrainSpec(steps=steps, batch_size=batch, lr=1e-4, optimizer="adam", amp=amp)
    batches = [synthetic_batch(batch, size, dev, pin=True) for _ in range(2)]
    runs: list[tuple[list[float], dict[str, torch.Tensor]]] = []
    with stage_environment(dev), uninitialized_fill(fill_uninitialized):
        for _ in range(repeat):
            seed_everything(0)
            model = ARCHS.get(arch)(TASK_CHANNELS, width=width, head_width=head_width).to(dev)
            runner = StepRunner(model, "nyuv2", spec, dev)
            losses = [runner(batches[i % 2], i)["loss"] for i in range(steps)]
            weights = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
            runs.append((losses, weights))
    first_losses, first_weights = runs[0]
    loss_diff = max(abs(a - b) for losses, _ in runs[1:] for a, b in zip(losses, first_losses, strict=True))
    weight_diff = max(
        float((w[k] - first_weights[k]).abs().max()) for _, w in runs[1:] for k in w if w[k].numel()
    )
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "repeat": repeat,
        "steps": steps,
        "fill_uninitialized": fill_uninitialized,
        "max_loss_difference": loss_diff,
        "max_weight_difference": weight_diff,
        "bit_identical": loss_diff == 0.0 and weight_diff == 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="deeplab_resnet34")
    parser.add_argument("--size", type=int, default=321, help="square input side (paper: 321)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--head-width", type=float, default=1.0)
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--nondeterministic",
        action="store_true",
        help="time cuDNN's autotuned kernels, not the stage's deterministic ones (what determinism costs)",
    )
    parser.add_argument(
        "--no-fill-uninitialized",
        action="store_true",
        help="keep the determinism contract but not its NaN fill of fresh tensors (what the fill costs)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="instead of timing: train this many identical short runs (--steps, default 20 here) and report "
        "how far they differ (the determinism tolerance of this device)",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        type=Path,
        default=None,
        help="also write the timing to FILE, for `mtlprune plan --step-time FILE` (docs/slurm.md)",
    )
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every worker of `mtlprune run` (runtime.keep_freed_memory, its default)
    load_plugins([])
    if args.repeat:
        if args.repeat < 2:
            parser.error("--repeat needs at least 2 runs to compare")
        if args.json is not None:
            parser.error("--json records step times for `mtlprune plan`; --repeat measures none")
        steps = args.steps if "--steps" in (argv if argv is not None else sys.argv) else 20
        out = repeatability(
            repeat=args.repeat,
            arch=args.arch,
            size=args.size,
            batch=args.batch,
            steps=steps,
            width=args.width,
            head_width=args.head_width,
            amp=args.amp,
            device=args.device,
            fill_uninitialized=not args.no_fill_uninitialized,
        )
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    out = check(
        arch=args.arch,
        size=args.size,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        width=args.width,
        head_width=args.head_width,
        amp=args.amp,
        channels_last=args.channels_last,
        device=args.device,
        deterministic=not args.nondeterministic,
        fill_uninitialized=not args.no_fill_uninitialized,
    )
    json.dump(out, sys.stdout, indent=2)
    print()
    if args.json is not None:
        atomic_write_json(args.json, out)
        print(f"wrote {args.json}: mtlprune plan CONFIG --step-time {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
