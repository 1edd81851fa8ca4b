"""Re-initialise the top level's encoder of a VQ-VAE training run whose top level is dead.

    python benchmarks/reset_top_level.py runs/vqc-3/vqvae [--seed 1]

Symptom (measured on vqc-1/vqc-3 after their first stage): the top encoder's output is the same
vector at every interior position (pre-quantization std exactly 0), so the top codebook is used
only along image borders. Its ReLUs are dead, so no loss can revive it by gradient. This writes
fresh weights for `encoders.<top>` and `pre_quant.<top>`, drops their optimizer moments (Adam
restarts them from zero steps) and marks the top codebook for re-seeding from the next batch.
Resume the run afterwards with `top_only` > 0 so the new encoder has to carry the image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vqcodec.checkpoint import load_state, save_state
from vqcodec.vqvae import VQVAE2, VQVAE2Config


def reset_top_level(run: Path, seed: int) -> list[str]:
    state = load_state(run / "state.pt")
    config = VQVAE2Config.from_dict(json.loads((run / "vqvae_config.json").read_text()))
    top = config.levels - 1
    torch.manual_seed(seed)
    fresh = VQVAE2(config).state_dict()
    prefixes = (f"encoders.{top}.", f"pre_quant.{top}.")
    weights = state["model.vqvae"]
    reset = [name for name in weights if name.startswith(prefixes)]
    for name in reset:
        weights[name] = fresh[name].clone()
    weights[f"quantizers.{top}.initialized"] = torch.tensor(False)
    # Adam's state is keyed by parameter position; forget the moments of the fresh weights.
    positions = [i for i, (name, _) in enumerate(VQVAE2(config).named_parameters()) if name.startswith(prefixes)]
    for i in positions:
        state["optimizer"]["state"].pop(i, None)
    save_state(run / "state.pt", state)
    return reset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a VQ-VAE run folder (state.pt, vqvae_config.json)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    reset = reset_top_level(args.run, args.seed)
    print(f"{args.run}: re-initialised {len(reset)} tensors of the top encoder; top codebook re-seeds next step")


if __name__ == "__main__":
    main()
