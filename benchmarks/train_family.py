"""Train one bundled model from its recipe: VQ-VAE-2, its PixelCNN prior, then the decoder stage.

    python benchmarks/train_family.py vqc-3 --out runs/vqc-3 [--threads 1] [--scale 1.0] [--device auto]
    python benchmarks/train_family.py vqc-4 --out runs/vqc-4w --vqvae-config '{"channels": 128, "res_channels": 64}'

Writes runs/<name>/vqvae/..., runs/<name>/prior/model.safetensors (VQ-VAE + prior) and, for recipes
with a decoder stage, runs/<name>/decoder/model.safetensors (same symbols, fine-tuned decoder); resumable:
rerun the same command to continue after a stop (`max_minutes` chunks on a lent GPU).
--vqvae-config changes the recipe's VQ-VAE (any `VQVAE2Config` field, as JSON): the stronger
autoencoder a GPU budget can train, with the recipe's stages, crops and step counts otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from vqcodec import recipes
from vqcodec.checkpoint import load_state
from vqcodec.train import DecoderTrainConfig, PriorTrainConfig, TrainConfig, train_decoder, train_prior, train_vqvae

from data_paths import TRAIN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(recipes.RECIPES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default=str(TRAIN))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the recipe's step counts")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--stage", choices=["vqvae", "prior", "decoder", "all"], default="all")
    parser.add_argument("--prior-steps", type=int, default=None, help="override the recipe's prior steps")
    parser.add_argument("--init-prior", default=None,
                        help="start the prior from this model file's prior (e.g. the shipped one after a VQ-VAE refine)")
    parser.add_argument("--vqvae-config", type=json.loads, default={},
                        help='JSON of VQVAE2Config fields that replace the recipe\'s, e.g. \'{"channels": 128}\'')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = _with_vqvae(recipes.get(args.name), args.vqvae_config, parser)
    common = dict(data=args.data, batch_size=recipe.batch_size, lr=recipe.lr,
                  warmup_steps=recipe.warmup_steps, num_workers=args.workers, device=args.device,
                  max_minutes=args.max_minutes, resume=True, log_every=50, val_every=500, ckpt_every=200)
    vqvae_path = args.out / "vqvae" / "vqvae.safetensors"
    if args.stage in ("vqvae", "all"):
        vqvae_path = _train_vqvae_stages(recipe, args.out / "vqvae", args.scale, common)
    if args.stage in ("prior", "all"):
        train_prior(PriorTrainConfig(out=str(args.out / "prior"), vqvae=str(vqvae_path), prior=dict(recipe.prior),
                                     init_prior=args.init_prior,
                                     steps=args.prior_steps or int(recipe.prior_steps * args.scale), crop=recipe.prior_crop,
                                     **common))
    if args.stage in ("decoder", "all") and recipe.decoder is not None:
        stage = recipe.decoder
        train_decoder(DecoderTrainConfig(out=str(args.out / "decoder"), model=str(args.out / "prior" / "model.safetensors"),
                                         refine_blocks=stage.refine_blocks, tail_blocks=stage.tail_blocks,
                                         steps=int(stage.steps * args.scale),
                                         crop=stage.crop, **{**common, "batch_size": stage.batch_size, "lr": stage.lr,
                                                             "warmup_steps": stage.warmup_steps}))


def _with_vqvae(recipe: recipes.Recipe, fields: dict, parser: argparse.ArgumentParser) -> recipes.Recipe:
    """The recipe with its VQ-VAE's fields replaced; a parser error names a field that does not exist."""
    known = {f.name for f in dataclasses.fields(recipe.vqvae)}
    if not isinstance(fields, dict) or set(fields) - known:
        parser.error(f"--vqvae-config takes a JSON object of {', '.join(sorted(known))}")
    try:
        return dataclasses.replace(recipe, vqvae=dataclasses.replace(recipe.vqvae, **fields))
    except (TypeError, ValueError) as err:
        parser.error(f"--vqvae-config: {err}")


def _train_vqvae_stages(recipe: recipes.Recipe, out: Path, scale: float, common: dict) -> Path:
    """First stage on the recipe's small crops, then (if any) the refine stage resumes the run."""
    stages = [(int(recipe.vqvae_steps * scale), recipe.crop, recipe.batch_size)]
    if recipe.vqvae_refine is not None:
        refine = recipe.vqvae_refine
        stages.append((int(refine.steps * scale), refine.crop, refine.batch_size))
    done = _steps_done(out / "state.pt")
    path = out / "vqvae.safetensors"
    for steps, crop, batch_size in stages:
        if done >= steps:
            continue  # finished earlier: resuming it would only rewrite the same weights
        path = train_vqvae(TrainConfig(out=str(out), vqvae=recipe.vqvae, steps=steps, crop=crop,
                                       msssim_weight=recipe.msssim_weight, top_only=recipe.top_only,
                                       **{**common, "batch_size": batch_size}))
        done = _steps_done(out / "state.pt")
        if done < steps:
            break  # stopped by --max-minutes: the next call resumes this stage
    return path


def _steps_done(state_path: Path) -> int:
    return int(load_state(state_path)["step"]) if state_path.exists() else 0


if __name__ == "__main__":
    main()
