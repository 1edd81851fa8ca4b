"""Prior evaluation time of a full decode, at random weights (no entropy coding).

Fast order: every step of both levels, timed end to end (stepper construction included).
Raster order: a sample of steps per level, reported per step and extrapolated to all steps.

    python benchmarks/prior_speed.py --threads 2 --width 768 --height 512

On a machine whose cores are busy with other work, OpenMP's spinning threads make many small
operations very slow with --threads 2; OMP_WAIT_POLICY=PASSIVE (set before starting Python)
avoids that. The process CPU time printed beside the wall time is less sensitive to such load.
"""

from __future__ import annotations

import argparse
import time

import torch

from vqcodec.prior import PriorConfig, SymbolPrior


def random_levels(config: PriorConfig, height: int, width: int, bottom_factor: int) -> list[torch.Tensor]:
    """Random symbol maps per level, bottom first, (1, h_l, w_l) int64."""
    sizes = [(height // bottom_factor, width // bottom_factor)]
    for u in config.upsample:
        sizes.append((sizes[-1][0] // u, sizes[-1][1] // u))
    return [torch.randint(0, k, (1, h, w)) for k, (h, w) in zip(config.codebook_size, sizes)]


def fast_decode_s(prior: SymbolPrior, levels: list[torch.Tensor]) -> tuple[float, float]:
    """(wall, process CPU) seconds for all fast-order steps of all levels, top first."""
    start, cpu = time.perf_counter(), time.process_time()
    for level in reversed(range(len(levels))):
        context = levels[level + 1] if level + 1 < len(levels) else None
        stepper = prior.stepper("fast", level, *levels[level].shape[-2:], context)
        for step in range(len(stepper.schedule)):
            stepper.logits(step, levels[level])
    return time.perf_counter() - start, time.process_time() - cpu


def raster_step_s(prior: SymbolPrior, levels: list[torch.Tensor], level: int, samples: int
                  ) -> tuple[float, float, int]:
    """(wall s, process CPU s) per raster step and the number of steps of one level, from `samples` steps."""
    context = levels[level + 1] if level + 1 < len(levels) else None
    stepper = prior.stepper("raster", level, *levels[level].shape[-2:], context)
    count = len(stepper.schedule)
    steps = torch.linspace(0, count - 1, samples).long().tolist()
    stepper.logits(steps[0], levels[level])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for step in steps:
        stepper.logits(step, levels[level])
    return (time.perf_counter() - start) / samples, (time.process_time() - cpu) / samples, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--codebook", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=300, help="raster steps timed per level")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = PriorConfig(codebook_size=(args.codebook, args.codebook), upsample=(2,))
    prior = SymbolPrior(config).eval()
    levels = random_levels(config, args.height, args.width, bottom_factor=4)
    print(f"config {config.to_dict()}, threads {args.threads}, maps {[tuple(s.shape[-2:]) for s in levels]}")
    fast_decode_s(prior, levels)  # warm-up
    times = sorted(fast_decode_s(prior, levels) for _ in range(args.repeats))
    print(f"fast order, full decode (both levels): best wall {times[0][0]:.3f} s "
          f"(process CPU {times[0][1]:.3f} s), median wall {times[len(times) // 2][0]:.3f} s")
    total = 0.0
    for level in reversed(range(len(levels))):
        wall, cpu, count = raster_step_s(prior, levels, level, args.samples)
        total += wall * count
        print(f"raster order, level {level}: {wall * 1e3:.2f} ms/step wall ({cpu * 1e3:.2f} ms CPU)"
              f" x {count} steps = {wall * count:.1f} s")
    print(f"raster order, full decode (both levels, extrapolated): {total:.1f} s wall")


if __name__ == "__main__":
    main()
