"""Judge a VQ-VAE run before training its prior: reconstruction PSNR and a rate bound on Kodak.

    python benchmarks/vqvae_probe.py runs/NAME/vqvae.safetensors [--limit 6]
    python benchmarks/vqvae_probe.py vqc-3            # a bundled model, for comparison

Encodes each image with the nearest codes (no rate-distortion optimisation), decodes it, and
reports the mean PSNR of the 8-bit result together with each level's *unconditional* entropy in
bits per pixel: the rate a memoryless coder would need. A trained prior codes the bundled models'
symbols in 55–70 % of that bound, so the bound tells early whether a design can land at the rate
it is meant for, and the PSNR whether it could beat JPEG there, before an hour of prior training.

It also decodes the encoder's vectors before quantization: first the bottom level's (the upper
levels quantized as usual), then every level's. That PSNR is the ceiling of any finer quantization
of those levels (a larger codebook, residual or product VQ) with this encoder and decoder: when it
is close to the nearest-code PSNR, more bits need a retrained autoencoder, not a finer quantizer.

Two files of one model before and after a decoder stage (`vqcodec train-decoder`) code every image
to the same symbols (same entropy bound), so their PSNR and decode time (nearest codes, one
thread) tell what the stage bought and what it costs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import torch

from vqcodec.checkpoint import load_model
from vqcodec.image import open_image, to_tensor, to_uint8
from vqcodec.errors import VQCodecError
from vqcodec.metrics import histogram_entropy, psnr
from vqcodec.models import resolve
from vqcodec.rd import list_images

from data_paths import KODAK



@torch.no_grad()
def probe(model_file: Path, images: list[Path]) -> dict:
    vqvae, _, _ = load_model(model_file)
    counts = [np.zeros(k, dtype=np.int64) for k in vqvae.config.codebook_size]
    psnrs: dict[str, list[float]] = {"nearest": [], "unquantized_bottom": [], "unquantized": []}
    pixels, decode_seconds = 0, 0.0
    for path in images:
        x, info = to_tensor(open_image(path))
        size, original = (info.height, info.width), to_uint8(x)
        vectors, symbols = vqvae.latent_vectors(x)  # symbols: the nearest codes, as `encode` gives
        codes = [q.lookup(s) for q, s in zip(vqvae.quantizers, symbols)]
        for name, maps in (("nearest", codes), ("unquantized_bottom", [vectors[0], *codes[1:]]),
                           ("unquantized", vectors)):
            start = time.perf_counter()
            decoded = vqvae.decode_vectors(maps, size)
            if name == "nearest":  # what decompression runs
                decode_seconds += time.perf_counter() - start
            psnrs[name].append(psnr(original, to_uint8(decoded)))
        pixels += info.height * info.width
        for level, s in enumerate(symbols):
            counts[level] += np.bincount(s.reshape(-1).numpy(), minlength=counts[level].size)
    bound = [histogram_entropy(c) * c.sum() / pixels for c in counts]  # a memoryless code's bits
    return {"model": str(model_file), "images": len(images), "psnr": float(np.mean(psnrs["nearest"])),
            "psnr_unquantized_bottom": float(np.mean(psnrs["unquantized_bottom"])),
            "psnr_unquantized": float(np.mean(psnrs["unquantized"])),
            "entropy_bpp_per_level": bound, "entropy_bpp": sum(bound),
            "decode_s_per_image": decode_seconds / len(images)}


@click.command()
@click.argument("model")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=KODAK,
              show_default=True, help="Folder of evaluation images.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images.")
def main(model: str, data: Path, limit: int | None) -> None:
    """MODEL: a model file (vqvae.safetensors or model.safetensors) or a bundled model's name."""
    torch.set_num_threads(1)
    try:
        model_file = resolve(model).path
        images = list_images(data)[:limit]
    except (VQCodecError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    print(json.dumps(probe(model_file, images), indent=2))


if __name__ == "__main__":
    main()
