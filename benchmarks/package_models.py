"""Copy trained models into the package as fp16 safetensors and write their model cards.

    python benchmarks/package_models.py --runs runs [--results benchmarks/results/kodak]

For each vqc-N with runs/vqc-N/prior/model.safetensors: weights are stored in fp16 (halves the
package; the codec computes in float32, and the RD numbers in the card are measured on the fp16
weights after packaging), and vqcodec/models/vqc-N.md is written from the training logs and, when
present, its point in the Kodak results (benchmarks/results/kodak/vqcodec-fast.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vqcodec import recipes
from vqcodec.checkpoint import load_model, save_model
from vqcodec.models import BUNDLED, DEFAULT

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "vqcodec" / "models"


def last_record(log: Path) -> dict:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    return lines[-1] if lines else {}


def records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def package(name: str, run: Path) -> Path:
    vqvae, prior, meta = load_model(run / "prior" / "model.safetensors")
    for module in (vqvae, prior):
        module.half()
    target = MODELS / BUNDLED[name]
    keep = {k: v for k, v in meta.items() if k not in ("format", "vqvae_config", "prior_config")}
    save_model(target, vqvae, prior, metadata={**keep, "name": name})
    return target


def card(name: str, run: Path, results_dir: Path | None) -> str:
    recipe = recipes.get(name)
    vq_log, prior_log = records(run / "vqvae" / "log.jsonl"), records(run / "prior" / "prior_log.jsonl")
    vq_last = next((r for r in reversed(vq_log) if "psnr" in r), {})
    vq_val = next((r for r in reversed(vq_log) if any(k.startswith("val") for k in r)), {})
    prior_val = next((r for r in reversed(prior_log) if any(k.startswith("val") for k in r)), {})
    steps_vq = max((r.get("step", 0) for r in vq_log), default=0)
    steps_prior = max((r.get("step", 0) for r in prior_log), default=0)
    lines = [
        f"# {name}{' (default)' if name == DEFAULT else ''}: VQ-VAE-2 + PixelCNN prior, trained briefly on CPU",
        "",
        "## Architecture",
        f"- VQ-VAE-2 config: `{json.dumps(recipe.vqvae.to_dict())}`",
        f"- Prior config (PixelCNN raster order + grouped fast order): `{json.dumps(recipe.prior)}`",
        "- Weights stored in fp16, computed in float32.",
        "",
        "## Training",
        "- Data: `shared/data/train`, 1,300 natural-photo crops (BSDS500 train/test, an ImageNet sample, "
        "Urban100, Sun-Hays80; research/non-commercial licence terms of those datasets apply, see the "
        "data set's SOURCES.md). Never Kodak.",
        f"- VQ-VAE: {steps_vq} steps (recipe: {recipe.vqvae_steps}) of batch {recipe.batch_size}, "
        f"{recipe.crop}x{recipe.crop} random crops, Adam lr {recipe.lr}, MSE + VQ losses.",
        f"- Prior: {steps_prior} steps (recipe: {recipe.prior_steps}) of batch {recipe.batch_size}, "
        f"{recipe.prior_crop}x{recipe.prior_crop} crops, cross-entropy of both decode orders. The shipped "
        "prior was trained in two phases: 400-500 steps at half that crop (maps that small are mostly "
        "border, and the top level then generalised badly to whole images), then continued at the "
        "recipe's crop until a time box ended; rebuilding from the recipe uses the recipe's crop throughout.",
        "- Hardware: 2 CPU cores shared with other jobs, a time-boxed run of about 35 + 25 minutes "
        "(no GPU was available). This is far short of a real training budget: retrain on a GPU with "
        f"`vqcodec train --config {name}` and `vqcodec train-prior --config {name}` and more steps.",
        f"- Last training log: `{json.dumps(vq_last)}`",
        f"- Validation (VQ-VAE): `{json.dumps(vq_val)}`",
        f"- Validation (prior): `{json.dumps(prior_val)}`",
    ]
    result = results_dir / "vqcodec-fast.json" if results_dir else None
    if result and result.exists():
        data = json.loads(result.read_text())
        if name in data.get("points", []):
            i = data["points"].index(name)
            lines += ["", "## Measured on Kodak (24 images; whole .vqc files, header included; fast order; "
                      "1 CPU thread on a shared 2-core machine)", ""]
            for key, label in (("bpp", "bpp"), ("psnr-rgb", "PSNR (dB)"), ("ms-ssim-rgb", "MS-SSIM"),
                               ("encoding_time", "encode (s/image)"), ("decoding_time", "decode (s/image)")):
                if key in data["results"]:
                    lines.append(f"- {label}: {data['results'][key][i]:.4f}")
    usage_file = ROOT / "benchmarks" / "results" / "codebook_usage.json"
    if usage_file.exists():
        levels = json.loads(usage_file.read_text())["models"].get(name, [])
        lines += ["", "## Codebook usage on Kodak (all 24 images; benchmarks/codebook_usage.py)", ""]
        lines += [f"- level {i} ({'bottom' if i == 0 else 'top'}): {u['in_use']:.1%} of {u['codebook_size']} codes, "
                  f"perplexity {u['perplexity']:.0f}" for i, u in enumerate(levels)]
        lines.append("- The top level collapsed to a few codes on whole images: it was trained on 64-px crops, "
                     "where its maps are 4x4 or 8x8 and mostly border. Train with crops of at least 128 px "
                     "(x4/x8 models) or 256 px (x8/x16 models).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "kodak")
    parser.add_argument("--cards-only", action="store_true", help="rewrite the cards, keep the weights")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in BUNDLED:
        run = args.runs / name
        if not (run / "prior" / "model.safetensors").exists():
            print(f"{name}: no trained model under {run}, skipped")
            continue
        if not args.cards_only:
            target = package(name, run)
            print(f"{name}: {target} ({target.stat().st_size / 1e6:.2f} MB)")
        (MODELS / f"{name}.md").write_text(card(name, run, args.results))


if __name__ == "__main__":
    main()
