"""Where a training run executes: device, torchrun/DDP, data order, schedule, logging, the loop.

Beside the flow, used by `train.py` (and benchmarks/train_throughput.py). `run_loop` owns the
cadence (log / validate / checkpoint / time limit) so that `train_vqvae` and
`train_prior` only say what one step and one validation do.

Data order is a pure function of (seed, step): epoch e uses
DistributedSampler(seed, epoch=e) and `ImageFolder.set_epoch(e)`, and a run that
resumes at step s starts at batch s mod (batches per epoch) of epoch
s div (batches per epoch). Together with the saved RNG states this makes a
resumed run repeat an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from vqcodec.checkpoint import clean_state_dict, load_state, rng_state, save_state, set_rng_state, unwrap
from vqcodec.data import ImageFolder


# Newer torch renames DDP's broadcast_buffers (and warns on the old name); both mean "no per-step sync".
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


@dataclass(frozen=True)
class Runtime:
    """This process's place in the run: device and (torchrun) rank."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # we called init_process_group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> this rank's GPU when CUDA is present, else the CPU; "cpu"; "cuda" (refused without CUDA)."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def setup_runtime(device: str = "auto") -> Runtime:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE and join the process group if there is one.

    Backend: nccl on CUDA, gloo on the CPU. A group that the caller initialized
    already (tests spawning processes) is used as is.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return Runtime(dev, rank, local_rank, world, owns)


def teardown_runtime(rt: Runtime) -> None:
    if rt.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base learning rate: linear warm-up, then cosine down to min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                   min_lr_ratio: float) -> LambdaLR:
    return LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps, min_lr_ratio))


def place_model(model: nn.Module, rt: Runtime, *, channels_last: bool = False) -> nn.Module:
    """Move to the device (channels_last when asked), before the optimizer sees the parameters.

    channels_last pays on CPU too: oneDNN convolutions ran a VQ-VAE training step 1.4x faster.
    """
    model = model.to(rt.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def wrap_model(model: nn.Module, rt: Runtime, *, compile_model: bool) -> nn.Module:
    """DDP when distributed, then torch.compile on request; `checkpoint.unwrap` undoes both.

    The quantizers synchronise their own codebook state across ranks, so DDP does not
    broadcast buffers every step.
    """
    if rt.distributed:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids, **_NO_BUFFER_SYNC)
    if compile_model:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


def autocast(rt: Runtime, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast when enabled, on CUDA and on CPUs that multiply bf16 in hardware (a VQ-VAE
    step 1.5x faster on a Zen 4 core); a no-op on other CPUs, which emulate bf16, slower than float32."""
    if enabled and (rt.device.type == "cuda" or (rt.device.type == "cpu" and cpu_has_bf16())):
        return torch.autocast(device_type=rt.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX-BF16; read from /proc/cpuinfo, so Linux only)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def train_batches(dataset: ImageFolder, batch_size: int, rt: Runtime, *, seed: int,
                  start_step: int, num_workers: int) -> Iterator[torch.Tensor]:
    """Endless (B, 3, crop, crop) float32 batches of this rank's shard, from batch `start_step` on.

    Raises:
        ValueError: the dataset has fewer images than one global batch.
    """
    sampler = DistributedSampler(dataset, num_replicas=rt.world_size, rank=rt.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    per_epoch = len(sampler) // batch_size
    if per_epoch == 0:
        raise ValueError(f"{len(dataset)} training images are fewer than one batch "
                         f"({batch_size} x {rt.world_size} processes)")
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)  # workers start per epoch, so they see this epoch's augmentation
        order = list(sampler)[skip * batch_size:]
        # A private generator: creating a loader iterator draws a seed, which must not
        # advance the global RNG (the quantizers' random choices depend on it).
        loader = DataLoader(dataset, batch_size=batch_size, sampler=order, drop_last=True,
                            num_workers=num_workers, pin_memory=rt.device.type == "cuda",
                            generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        yield from loader
        epoch, skip = epoch + 1, 0


def val_loader(dataset: ImageFolder, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0))  # keeps the global RNG untouched


def save_training_state(path: Path, rt: Runtime, *, step: int, models: dict[str, nn.Module],
                        optimizer: torch.optim.Optimizer, scheduler: LambdaLR) -> None:
    """Every rank's RNG is gathered (a collective); rank 0 writes the file atomically."""
    rngs = [rng_state()]
    if rt.distributed:
        rngs = [None] * rt.world_size  # type: ignore[list-item]
        dist.all_gather_object(rngs, rng_state())
    if rt.is_main:
        state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rngs, **{f"model.{k}": clean_state_dict(m) for k, m in models.items()}}
        save_state(path, state)


def load_training_state(path: Path, rt: Runtime, *, models: dict[str, nn.Module],
                        optimizer: torch.optim.Optimizer, scheduler: LambdaLR) -> int:
    """Restore weights, optimizer, schedule and this rank's RNG; returns the step reached."""
    state = load_state(path)
    for key, model in models.items():
        unwrap(model).load_state_dict(state[f"model.{key}"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rngs = state["rng"]
    if len(rngs) == rt.world_size:
        set_rng_state(rngs[rt.rank])
    else:  # a different number of processes: the run goes on, just not bit for bit
        seed_everything(int(state["step"]) * 1000 + rt.rank)
    return int(state["step"])


def optimizer_step(loss: Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float) -> None:
    """Backward, global-norm gradient clipping (grad_clip > 0), optimizer step, schedule step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()


def to_device(x: Tensor, rt: Runtime, channels_last: bool) -> Tensor:
    """A (B, C, H, W) batch on the run's device, channels_last when asked."""
    x = x.to(rt.device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_out(out: Path, rt: Runtime, configs: dict[str, dict[str, Any]], *, state_file: str, resume: bool,
                fixed: Sequence[str] = ()) -> Path:
    """Create the output folder and (rank 0) write the run's configs as JSON.

    A folder that holds a run's state is only continued with resume, and then only with the same
    `fixed` configs (those that shape the weights in the state). Both are checked before anything
    is written, so a refused call leaves the folder as it was.
    """
    state = out / state_file
    if state.exists() and not resume:
        raise ValueError(f"{out} already holds a run ({state_file}): pass --resume to continue it, "
                         "or choose another --out")
    for name in fixed if state.exists() else ():
        saved = out / name
        if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(configs[name])):
            raise ValueError(f"{out} holds a run of another {name.removesuffix('.json')} than this one: "
                             "its state cannot continue with it (choose another --out)")
    if resume and not state.exists() and rt.is_main:
        print(f"note: {out} holds no {state_file} to resume; starting a new run", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    if rt.is_main:
        for name, content in configs.items():
            (out / name).write_text(json.dumps(content, indent=2) + "\n")
    return out


def any_rank(flag: bool, rt: Runtime) -> bool:
    """True on every rank if `flag` is True on any rank (so all ranks stop together)."""
    if not rt.distributed:
        return flag
    t = torch.tensor([float(flag)], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class MetricsLog:
    """JSON lines at `path` (one object per event), written by rank 0 only."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


@dataclass(frozen=True)
class LoopSpec:
    """Cadence of `run_loop`; steps count optimizer steps over the whole run."""

    steps: int
    log_every: int
    val_every: int
    ckpt_every: int
    max_minutes: float | None
    images_per_step: int  # global batch: batch_size x world_size
    show: Sequence[str] = ("loss",)  # record keys shown on the progress bar
    validate_start: bool = False  # fine-tuning: validate the starting weights too, so the log shows the gain


def run_loop(rt: Runtime, spec: LoopSpec, start_step: int, *,
             train_step: Callable[[], dict[str, torch.Tensor]],
             summarize: Callable[[dict[str, float]], dict[str, Any]],
             validate: Callable[[], dict[str, Any]] | None,
             checkpoint: Callable[[int], None],
             log: MetricsLog) -> int:
    """Run train_step until spec.steps or the time limit; returns the step reached.

    train_step: one optimizer step; returns detached () tensors, averaged per log window
        (accumulated on the device, so no host sync happens between log steps).
    summarize: the averaged window -> the logged record (adds psnr, lr, codebook usage...).
    validate: () -> record, run every val_every steps and at the end (and at step 0 when
        spec.validate_start and the run starts fresh).
    checkpoint: called with the step every ckpt_every steps, at the end and on a time stop.
    The time limit counts from the loop's start and is checked after every step (all ranks agree).
    """
    deadline = None if spec.max_minutes is None else time.monotonic() + 60.0 * spec.max_minutes
    step, sums, window = start_step, {}, 0
    bar = tqdm(total=spec.steps, initial=step, disable=not rt.is_main, dynamic_ncols=True)
    if validate is not None and spec.validate_start and step == 0:
        log.write({"kind": "val", "step": 0, **validate()})
    t0 = time.perf_counter()
    while step < spec.steps:
        for key, value in train_step().items():
            sums[key] = sums.get(key, 0.0) + value
        step, window = step + 1, window + 1
        bar.update(1)
        last = step == spec.steps
        if step % spec.log_every == 0 or last:
            elapsed = time.perf_counter() - t0
            mean = {k: float(v) / window for k, v in sums.items()}
            record = {"kind": "train", "step": step, **summarize(mean),
                      "images_per_s": spec.images_per_step * window / max(elapsed, 1e-9)}
            log.write(record)
            bar.set_postfix_str(_postfix(record, spec.show), refresh=False)
            sums, window = {}, 0
        if validate is not None and (step % spec.val_every == 0 or last):
            log.write({"kind": "val", "step": step, **validate()})
        stop = deadline is not None and any_rank(time.monotonic() > deadline, rt)
        if stop or last or step % spec.ckpt_every == 0:
            checkpoint(step)
        if stop and not last:
            log.write({"kind": "stop", "step": step, "reason": f"max_minutes={spec.max_minutes}"})
            break
        if window == 0:
            t0 = time.perf_counter()  # windows time training only, not validation or saving
    bar.close()
    return step


def _postfix(record: dict[str, Any], keys: Sequence[str]) -> str:
    parts = []
    for key in keys:
        value = record.get(key)
        if isinstance(value, list):
            parts.append(f"{key}=" + "/".join(f"{v:.3g}" for v in value))
        elif isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
    return " ".join(parts)
