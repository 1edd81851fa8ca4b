"""VQ-VAE training throughput (images/s) at 256 x 256, on this CPU and on CUDA when present.

Times whole optimizer steps exactly as `vqcodec.train` runs them (autocast, channels_last,
Adam, gradient clipping) on in-memory batches, so data loading is not part of the number.

    .venv/bin/python benchmarks/train_throughput.py                      # VQVAE2Config defaults
    .venv/bin/python benchmarks/train_throughput.py --config vqc-3 --threads 2
    .venv/bin/python benchmarks/train_throughput.py --vqvae-config my.json --batch-size 32 --compile

Writes benchmarks/results/train_throughput.json (one entry per device).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vqcodec.runtime import Runtime, autocast, make_scheduler, optimizer_step, place_model, to_device, wrap_model
from vqcodec.vqvae import VQVAE2, VQVAE2Config

OUT = Path(__file__).parent / "results" / "train_throughput.json"


def vqvae_config(args: argparse.Namespace) -> tuple[str, VQVAE2Config]:
    """(name, config) from --config (a recipe), --vqvae-config (JSON) or the defaults."""
    if args.config:
        from vqcodec import recipes

        return args.config, recipes.get(args.config).vqvae
    if args.vqvae_config:
        return str(args.vqvae_config), VQVAE2Config.from_dict(json.loads(Path(args.vqvae_config).read_text()))
    return "VQVAE2Config()", VQVAE2Config()


def measure(config: VQVAE2Config, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Mean seconds per training step after warm-up; images/s = batch / step time."""
    torch.manual_seed(0)
    rt = Runtime(device)
    model = place_model(VQVAE2(config), rt, channels_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scheduler = make_scheduler(optimizer, 0, 10_000, 0.1)
    net = wrap_model(model, rt, compile_model=args.compile)
    x = to_device(torch.rand(args.batch_size, 3, args.crop, args.crop), rt, channels_last=True)

    def step() -> None:
        with autocast(rt, enabled=True):
            result = net(x)
        loss = F.mse_loss(result.x_hat.float(), x) + result.vq_loss
        optimizer_step(loss, model, optimizer, scheduler, grad_clip=1.0)

    for _ in range(args.warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    step_s = (time.perf_counter() - start) / args.steps
    return {"device": str(device), "name": _device_name(device), "threads": torch.get_num_threads(),
            "amp_bf16": device.type == "cuda", "compile": args.compile,
            "step_s": step_s, "images_per_s": args.batch_size / step_s}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="recipe name (vqcodec.recipes)")
    parser.add_argument("--vqvae-config", type=Path, help="JSON of VQVAE2Config fields")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per device")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (data init, allocator)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped when absent")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name, config = vqvae_config(args)
    results = []
    for kind in args.devices.split(","):
        if kind == "cuda" and not torch.cuda.is_available():
            continue
        result = measure(config, torch.device(kind), args)
        print(f"{kind:5s} {result['name']}: {result['images_per_s']:.2f} images/s "
              f"({result['step_s'] * 1000:.0f} ms/step, batch {args.batch_size}, {args.crop}x{args.crop})")
        results.append(result)
    report = {"config_name": name, "vqvae": config.to_dict(), "batch_size": args.batch_size, "crop": args.crop,
              "steps": args.steps, "torch": torch.__version__, "cpu_count": os.cpu_count(),
              "load_avg_1min": os.getloadavg()[0],  # CPU numbers on a shared machine drop with load
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
