"""Copy trained models into the package as compact safetensors and write their model cards.

    python benchmarks/package_models.py --runs runs [--results benchmarks/results/kodak] [--keep-history]
    python benchmarks/package_models.py --measured-only   # every card's Kodak sections, from the results
    python benchmarks/package_models.py --requantize      # the shipped weights again, in today's storage
    python benchmarks/package_models.py --requantize --int8-vqvae   # ... with the VQ-VAEs in 8 bits too

For each vqc-N with runs/vqc-N/decoder/model.safetensors (the recipe's last stage) or else
runs/vqc-N/prior/model.safetensors: the VQ-VAE is stored in fp16 (or in 8 bits, --int8-vqvae) and
the prior's weight matrices and kernels in 8 bits with an fp16 scale per row
(`checkpoint.quantize_rows`; the priors are 60 % of the weights, and 8 bits moved their rate by
+0.24 % at most on training crops). The codec computes in float32, and the RD numbers in the card
are measured on the stored weights after packaging.
vqcodec/models/vqc-N.md is written from the training logs and, when present, its points in the
Kodak results (benchmarks/results/kodak/vqcodec-{fast,raster}.json).

--keep-history: the run holds only later stages on top of the shipped model (a decoder stage,
a prior fine-tuning, or both; the earlier stages' logs are gone); the card keeps its whole
training history and gains a line per stage of this run. Packaging the same run again rewrites
those lines instead of adding them twice.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from vqcodec import recipes
from vqcodec.checkpoint import INT8_SCALE, load_model, save_model
from vqcodec.models import BUNDLED, DEFAULT, RESAMPLED, trained_model
from vqcodec.prior import ORDERS, PriorConfig
from vqcodec.vqvae import GROWABLE_BLOCKS, VQVAE2

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "vqcodec" / "models"


def records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


# The prior runs of a model, in the order they trained: a later one starts from the one before
# (`--init-prior`), usually to train the other decode order (`--order`), so the last holds both.
PRIOR_STAGES = ("prior", "prior-2")


def final_files(run: Path) -> tuple[Path, Path] | None:
    """(file of the VQ-VAE, file of the prior) to ship from a run; None when it has neither stage.

    The VQ-VAE comes from the decoder stage where there is one, and the prior from the last prior
    run. In a recipe run the decoder stage comes last and its file holds the prior too, the same
    one; stages trained side by side (they touch disjoint parts: the decoder side, the prior), or
    on top of the shipped model (--keep-history), each give their own part.
    """
    decoder = run / "decoder" / "model.safetensors"
    priors = [file for file in (run / stage / "model.safetensors" for stage in PRIOR_STAGES) if file.exists()]
    if not decoder.exists() and not priors:
        return None
    return (decoder if decoder.exists() else priors[-1]), (priors[-1] if priors else decoder)


def package(name: str, vqvae_file: Path, prior_file: Path, int8_vqvae: bool = False) -> Path:
    """Store a model in the package: the VQ-VAE in fp16 (or 8 bits with int8_vqvae), the prior in 8 bits."""
    vqvae, prior, meta = load_model(vqvae_file)
    if prior_file != vqvae_file:
        prior_vqvae, prior, _ = load_model(prior_file)
        check_same_symbols(vqvae, prior_vqvae, vqvae_file, prior_file)
    if not int8_vqvae:
        vqvae.half()  # 8-bit parts stay float32 here: save_model quantizes them from full precision
    target = MODELS / BUNDLED[name]
    keep = {k: v for k, v in meta.items() if k not in ("format", "vqvae_config", "prior_config")}
    int8 = ("vqvae", "prior") if int8_vqvae else ("prior",)
    save_model(target, vqvae, prior, metadata={**keep, "name": name}, compact=True, int8=int8)
    return target


def check_same_symbols(a: VQVAE2, b: VQVAE2, a_file: Path, b_file: Path) -> None:
    """Refuse to pair a prior with a VQ-VAE whose encoder side (hence symbols) is not its own."""
    decoder_side = tuple(f"{name}." for name, module in a.named_modules()
                         if any(module is m for m in a.decoder_modules()))
    theirs = b.state_dict()
    differ = [k for k, v in a.state_dict().items()
              if not k.startswith(decoder_side) and not (k in theirs and torch.equal(v, theirs[k]))]
    if differ:
        raise SystemExit(f"{a_file} and {b_file} encode differently ({differ[:3]} ...): the prior was "
                         "trained on other symbols")


# What the shipped weights went through beyond their recipe (this release, trained on CPU).
TOP_RESET_AT = {"vqc-1": 4400, "vqc-3": 2600}  # benchmarks/reset_top_level.py, then resumed
# Steps of the previous release's prior (half crop, then full crop) that this release fine-tuned.
PRIOR_BEFORE = {"vqc-1": (500, 650), "vqc-2": (465, 550), "vqc-3": (500, 650), "vqc-4": (411, 550)}


def train_minutes(log: list[dict], batch_of_step) -> float:
    """Wall-clock minutes of a run, from its logged throughput (log records every 50 steps)."""
    train = [r for r in log if r.get("kind") == "train" and r.get("images_per_s")]
    minutes, last = 0.0, 0
    for r in train:
        minutes += (r["step"] - last) * batch_of_step(r["step"]) / r["images_per_s"] / 60
        last = r["step"]
    return minutes


def training_lines(name: str, run: Path) -> list[str]:
    """The card's Training section up to the decoder stage: the VQ-VAE's stages, then each prior run."""
    recipe = recipes.get(name)
    refine = recipe.vqvae_refine
    vq_log = records(run / "vqvae" / "log.jsonl")
    steps_vq = max((r.get("step", 0) for r in vq_log), default=0)
    vq_minutes = train_minutes(vq_log, lambda step: recipe.batch_size if step <= recipe.vqvae_steps or not refine
                               else refine.batch_size)
    priors = [found for found in (stage_run(run, stage, "prior") for stage in PRIOR_STAGES) if found]
    prior_minutes = sum(train_minutes(log, lambda step, batch=cfg["batch_size"]: batch) for cfg, log, _ in priors)
    lines = [
        "- Data: `shared/data/train`, 1,300 natural-photo crops (BSDS500 train/test, an ImageNet sample, "
        "Urban100, Sun-Hays80; research/non-commercial licence terms of those datasets apply, see the "
        "data set's SOURCES.md). Never Kodak.",
        f"- VQ-VAE, stage 1: {recipe.vqvae_steps} steps of batch {recipe.batch_size}, {recipe.crop}x{recipe.crop} "
        f"random crops, Adam lr {recipe.lr} (cosine), MSE + VQ losses (`vqcodec train --config {name}`). "
        f"The recipe decodes {recipe.top_only:.0%} of the samples from the top level alone (weight "
        "0.25), which keeps the top level in use: without it an earlier release's top level died (one "
        "encoder output everywhere inside the image).",
    ]
    if refine:
        lines.append(f"- VQ-VAE, refine stage: the same run resumed to {refine.steps} steps in total "
                     f"(trained: {steps_vq}) on {refine.crop}x{refine.crop} crops, batch {refine.batch_size}, "
                     f"the cosine schedule stretched to the new length (`vqcodec train --config {name} --refine`). "
                     "Larger crops give the top level interior context.")
    if name in TOP_RESET_AT:
        lines.append(f"- At step {TOP_RESET_AT[name]} the dead top encoder was re-initialised "
                     "(`benchmarks/reset_top_level.py`: its ReLUs were dead, so no gradient could revive it) "
                     "and the run resumed.")
    for i, (cfg, log, steps) in enumerate(priors):
        lines += prior_stage_lines(name, cfg, log, steps, first=i == 0)
    stages = "prior stage" if len(priors) == 1 else "prior stages"
    lines += [
        f"- Hardware: 2 shared CPU cores, no GPU (none was lent to this task): about {vq_minutes:.0f} minutes "
        f"for the VQ-VAE and {prior_minutes:.0f} for the {stages}, several runs sharing the cores. This is "
        "far short of a real training budget; a GPU run of the same recipe with many more steps is the next step.",
        f"- Last training log: `{json.dumps(next((r for r in reversed(vq_log) if 'psnr' in r), {}))}`",
    ]
    return lines


def prior_stage_lines(name: str, cfg: dict, log: list[dict], steps: int, first: bool) -> list[str]:
    """One prior run of a model trained from scratch, and its last validation, as two Training lines.

    A run after the first started from the one before's prior (`--init-prior`), usually to train
    the other decode order's networks (`--order`), leaving the rest as they were.
    """
    orders = list(cfg.get("orders") or ORDERS)
    alone = len(orders) == 1
    trained = f"cross-entropy of the {orders[0]} order alone" if alone else "cross-entropy of both decode orders"
    flags = (f" --order {orders[0]}" if alone else "") + (" --init-prior ..." if cfg.get("init_prior") else "")
    label = "Prior" if first else "Prior, next stage"
    text = (f"- {label}: {steps} steps of batch {cfg['batch_size']}, {cfg['crop']}x{cfg['crop']} crops, Adam lr "
            f"{cfg['lr']} (cosine), {trained} (`vqcodec train-prior --config {name}{flags}`).")
    if cfg.get("init_prior") and not first:
        text += " It started from the stage before's prior, whose other networks it left as they were."
    elif cfg.get("init_prior") and name in PRIOR_BEFORE:
        half, full = PRIOR_BEFORE[name]
        text += (f" Fine-tuned (`--init-prior`) from the previous release's prior, trained {half} steps at "
                 f"half this crop and {full} at this crop on the stage-1 symbols: {half + full + steps} "
                 f"steps in all, the recipe's {recipes.get(name).prior_steps} for a from-scratch rebuild.")
    val = [r for r in log if "val_bpp_fast" in r]
    if len(val) > 1:
        text += " Held-out estimate ({0}x{0} crops): {1}.".format(cfg["crop"], ", ".join(
            f"{val[0][f'val_bpp_{order}']:.4f} -> {val[-1][f'val_bpp_{order}']:.4f} bpp at steps "
            f"{val[0]['step']} -> {val[-1]['step']} ({order} order)" for order in orders))
    return [text, f"- Validation ({label.lower()}): `{json.dumps(val[-1] if val else {})}`"]


def stage_run(run: Path, stage: str, kind: str | None = None) -> tuple[dict, list[dict], int] | None:
    """(train config, log records, last step) of runs/NAME/<stage>, None if absent.

    kind ("decoder" or "prior") names the run's files; by default the folder's name.
    """
    kind = kind or stage
    config_file = run / stage / f"{kind}_train_config.json"
    if not config_file.exists():
        return None
    log = records(run / stage / f"{kind}_log.jsonl")
    return json.loads(config_file.read_text()), log, max((r.get("step", 0) for r in log), default=0)


def decoder_lines(name: str, run: Path) -> list[str]:
    """The decoder stage of the card's Training section (empty when the run has none)."""
    stage = stage_run(run, "decoder")
    if stage is None:
        return []
    cfg, log, steps = stage
    before, after = decoder_blocks(run, "source_vqvae_config.json"), decoder_blocks(run, "vqvae_config.json")
    minutes = train_minutes(log, lambda step: cfg["batch_size"])
    val = [r["val_psnr"] for r in log if "val_psnr" in r]
    gain = f" Held-out PSNR (5% of the training crops) {val[0]:.2f} -> {val[-1]:.2f} dB." if len(val) > 1 else ""
    grown = growth_phrase(before["refine_blocks"], after["refine_blocks"])
    if after["tail_blocks"] > before["tail_blocks"]:
        grown += (f", and {tail_phrase(before['tail_blocks'], after['tail_blocks'])} before its last layer "
                  "(the finest features), the new ones identity-initialised")
    return [
        f"- Decoder stage: {grown}, "
        f"then the decoder side alone trained {steps} steps of batch {cfg['batch_size']} on {cfg['crop']}x{cfg['crop']} "
        f"crops, Adam lr {cfg['lr']} (cosine), MSE, on the frozen symbols (`vqcodec train-decoder --config {name} "
        f"--model ...`): encoder, codebooks and prior are unchanged, so every image codes to the same symbols and "
        f"bits as before this stage. About {minutes:.0f} minutes on 1 CPU thread.{gain}",
        f"- Last decoder-stage log: `{json.dumps(next((r for r in reversed(log) if 'psnr' in r), {}))}`",
    ]


def card(name: str, run: Path, results_dir: Path | None) -> str:
    lines = [
        f"# {name}{' (default)' if name == DEFAULT else ''}: VQ-VAE-2 + PixelCNN prior, trained on CPU",
        "",
        "## Architecture",
        *architecture_lines(name),
        "",
        "## Training",
        *training_lines(name, run),
        *decoder_lines(name, run),
    ]
    return "\n".join(lines + measured_lines(name, results_dir)) + "\n"


# The sentence that ties the last prior line to the recipe; only the newest line keeps it.
_RECIPE_STEPS = re.compile(r" The recipe's prior_steps \(\d+\) count (?:these steps too|the steps of the decode order "
                           r"that saw the most in all)\.")


def card_with_history(name: str, run: Path, results_dir: Path | None) -> str:
    """The shipped card's Training section (its runs' logs are gone) + this run's stages.

    With --keep-history a prior run in the same folder is a fine-tuning of the shipped prior on
    the (unchanged) symbols, done after every stage the card already lists; it is added as a line
    of its own. A kept line equal to one this run writes (the same run packaged again) is dropped.
    """
    old = (MODELS / f"{name}.md").read_text().split("\n## Measured on Kodak")[0].rstrip("\n").split("\n")
    training = old[old.index("## Training") + 1 :]
    if stage_run(run, "prior") is not None:  # the recipe's prior_steps now include this run's steps too
        training = [_RECIPE_STEPS.sub("", re.sub(r"the recipe's \d+ for a from-scratch rebuild",
                                                  "before the fine-tuning below", line)) for line in training]
    ours = prior_validation_line(run)
    shipped = last_validation([line for line in training if line != ours])
    added = decoder_lines(name, run) + prior_again_lines(name, run, shipped, card_prior_config(old))
    rewritten = {_RECIPE_STEPS.sub("", line) for line in added}
    training = [line for line in training if line not in rewritten]
    lines = [old[0], "", "## Architecture", *architecture_lines(name), "", "## Training", *training, *added]
    return "\n".join(lines + measured_lines(name, results_dir)) + "\n"


def card_prior_config(lines: list[str]) -> dict | None:
    """The prior config quoted in a card's Architecture section."""
    for line in lines:
        if line.startswith("- Prior config"):
            return json.loads(re.search(r"`(\{.*\})`", line).group(1))
    return None


def decoder_blocks(run: Path, config_name: str) -> dict[str, int]:
    """Decoder refine and tail blocks in one of the decoder run's model configs.

    train-decoder writes source_vqvae_config.json (the model it started from) and vqvae_config.json
    (the model it trains): the two sets of counts tell whether the stage grew the decoder.
    """
    config = run / "decoder" / config_name
    if not config.exists():
        raise SystemExit(f"{config} is missing: train-decoder writes it when a run starts; for a run older "
                         "than source_vqvae_config.json, write there the config of the model it started from")
    values = json.loads(config.read_text())
    return {name: values.get(name, 0) for name in GROWABLE_BLOCKS}


def growth_phrase(before: int, after: int) -> str:
    """What a decoder stage did to the trunk's refine blocks."""
    if not before:
        return f"{after} identity-initialised residual blocks added to the decoder trunk"
    if before == after:  # a stage of more training, no new blocks
        return f"the decoder trunk kept at its {after} refine blocks"
    return f"the decoder trunk grown from {before} to {after} refine blocks, the new ones identity-initialised"


def tail_phrase(before: int, after: int) -> str:
    """What a decoder stage did to the blocks before the decoder's last layer (after > before)."""
    return f"{after} residual blocks added" if not before else f"the residual blocks grown from {before} to {after}"


def last_validation(lines: list[str]) -> dict | None:
    """The last prior validation record quoted in card lines (the shipped prior's held-out bpp)."""
    for line in reversed(lines):
        quoted = re.search(r"`(\{.*\})`", line)
        if quoted and "val_bpp_fast" in quoted.group(1):
            return json.loads(quoted.group(1))
    return None


def prior_validation_line(run: Path) -> str | None:
    """The card line quoting the prior run's last validation; None without a prior run."""
    stage = stage_run(run, "prior")
    if stage is None:
        return None
    val = [r for r in stage[1] if "val_bpp_fast" in r]
    return f"- Validation after this fine-tuning: `{json.dumps(val[-1] if val else {})}`"


def prior_again_lines(name: str, run: Path, shipped: dict | None = None,
                      shipped_prior: dict | None = None) -> list[str]:
    """A prior fine-tuning run on top of the shipped model, as one Training line (empty when absent).

    `shipped` is the shipped prior's validation record. When the run's own first validation has the
    same raster-order rate (networks a run never rebuilds) it saw the same validation crops.
    Otherwise the run validated on other crops, and its first validation is the starting point.
    `shipped_prior` is the shipped prior's config: a run whose fast-order fields differ rebuilt
    those networks (`--prior-config`) and warm-started them from the shipped ones.
    """
    stage = stage_run(run, "prior")
    if stage is None:
        return []
    cfg, log, steps = stage
    val = [r for r in log if "val_bpp_fast" in r]
    same_crops = bool(shipped and val and abs(val[0]["val_bpp_raster"] - shipped["val_bpp_raster"]) <= 1e-3)
    start = shipped if same_crops else (val[0] if val else None)
    crops = "" if same_crops or not shipped else f" on this run's validation crops ({cfg['crop']}x{cfg['crop']})"
    change = (f" Held-out estimate{crops} {start['val_bpp_fast']:.4f} -> {val[-1]['val_bpp_fast']:.4f} bpp (fast "
              f"order), {start['val_bpp_raster']:.4f} -> {val[-1]['val_bpp_raster']:.4f} bpp (raster order)."
              if start and len(val) > 1 else "")
    run_prior = run / "prior" / "prior_config.json"
    rebuilt = fast_rebuild_note(json.loads(run_prior.read_text()) if run_prior.exists() else None,
                                shipped_prior, val[0]["val_bpp_fast"] if val else None)
    runs = cfg.get("runs", [steps])  # back-to-back runs, each from the last one's prior
    chained = (f" in {len(runs)} runs of {' + '.join(map(str, runs))} steps, each with its own warm-up and cosine,"
               if len(runs) > 1 else "")
    return [f"- Prior, fine-tuned again after the stages above (the symbols are the same): {steps} more steps{chained} of "
            f"batch {cfg['batch_size']}, {cfg['crop']}x{cfg['crop']} crops, Adam lr {cfg['lr']} "
            f"(`vqcodec train-prior --config {name} --vqvae DECODER_STAGE_MODEL --init-prior SHIPPED_MODEL`), about "
            f"{train_minutes(log, lambda step: cfg['batch_size']):.0f} minutes on the shared 2-core CPU."
            f"{one_order_note(runs, cfg.get('run_orders', [cfg.get('orders', [])]))}{rebuilt}{rdo_note(cfg)}{change} "
            f"The recipe's prior_steps ({recipes.get(name).prior_steps}) count the steps of the decode order "
            "that saw the most in all.",
            prior_validation_line(run)]


def rdo_note(cfg: dict) -> str:
    """What a prior run trained on when it learned the encoder's optimised symbols, as a sentence."""
    if cfg.get("symbols", "nearest") != "rdo":
        return ""
    return (f" It learned the symbols the default encoder writes (`--symbols rdo`), not the nearest codes: those "
            f"of {cfg['rdo_images']} training images (256x256), optimised once ({cfg['rdo_steps']} steps) with the "
            f"shipped prior, in random crops of {cfg['crop']}x{cfg['crop']} pixels; its held-out estimates below are "
            f"on nearest codes, which it no longer learns (the coded rate is measured under Measured on Kodak).")


_FAST_FIELDS = ("fast_layers", "fast_groups", "fast_channels")


def fast_rebuild_note(run_prior: dict | None, shipped_prior: dict | None, warm_start_bpp: float | None) -> str:
    """How a prior run rebuilt the shipped fast-order networks, as a sentence ('' if it kept them)."""
    if not (run_prior and shipped_prior):
        return ""

    def fast(config: dict) -> dict:
        prior = PriorConfig.from_dict(config)
        return {"fast_layers": prior.fast_layers, "fast_groups": list(prior.fast_groups),
                "fast_channels": prior.fast_width}

    mine, theirs = fast(run_prior), fast(shipped_prior)
    changed = [k for k in _FAST_FIELDS if mine[k] != theirs[k]]
    if not changed:
        return ""
    if "fast_groups" in changed:
        how = "embeddings, conditioning networks and heads carried over, the input projections started fresh"
    elif mine["fast_layers"] < theirs["fast_layers"]:
        how = "they kept the shipped networks' first residual units"
    else:
        kept = [what for field, what in (("fast_layers", "new residual units being the identity"),
                                         ("fast_channels", "new channels having zero weights into the old ones"))
                if field in changed]
        how = f"they computed the shipped logits at the start, {' and '.join(kept)}"
    start = f" (fast order {warm_start_bpp:.4f} bpp at the warm start)" if warm_start_bpp is not None else ""
    return (f" The fast-order networks were rebuilt first (`--prior-config` {json.dumps({k: mine[k] for k in changed})},"
            f" shipped {json.dumps({k: theirs[k] for k in changed})}) and warm-started from the shipped ones: "
            f"{how}{start}.")


def one_order_note(runs: list[int], run_orders: list[list[str]]) -> str:
    """Which of the chained prior runs trained one decode order only (`--order`), as a sentence."""
    single = [(i, orders[0]) for i, orders in enumerate(run_orders) if len(orders) == 1]
    if not single:
        return ""
    if len(runs) == 1:
        text = f"it trained only the {single[0][1]} networks (`--order {single[0][1]}`)"
    else:
        text = "; ".join(f"run {i + 1} ({runs[i]} steps) trained only the {order} networks (`--order {order}`)"
                         for i, order in single)
    return f" {text[0].upper()}{text[1:]}, leaving the other order's as they were."


def architecture_lines(name: str) -> list[str]:
    """The card's Architecture section: the configs and the storage, read from the shipped file."""
    with safe_open(str(MODELS / BUNDLED[trained_model(name)]), framework="pt") as f:
        meta = f.metadata()
        int8_parts = {k.split(".", 1)[0] for k in f.keys() if k.endswith(INT8_SCALE)}
    if int8_parts == {"vqvae", "prior"}:
        storage = ("Weight matrices, kernels and codebooks of both the VQ-VAE and the prior stored in 8 bits with "
                   "an fp16 scale per row, biases in fp16; all computed in float32.")
    elif int8_parts == {"prior"}:
        storage = ("VQ-VAE weights stored in fp16; the prior's weight matrices and kernels in 8 bits with an fp16 "
                   "scale per row, its biases in fp16; all computed in float32.")
    else:
        storage = "Weights stored in fp16, computed in float32."
    return [
        f"- VQ-VAE-2 config: `{meta['vqvae_config']}`",
        f"- Prior config (PixelCNN raster order + grouped fast order): `{meta['prior_config']}`",
        f"- {storage}",
    ]


def measured_lines(name: str, results_dir: Path | None) -> list[str]:
    """Kodak RD point and codebook usage sections, from the committed benchmark results."""
    lines: list[str] = []
    for order in ("fast", "raster"):
        result = results_dir / f"vqcodec-{order}.json" if results_dir else None
        if not (result and result.exists()):
            continue
        data = json.loads(result.read_text())
        if name in data.get("points", []):
            i = data["points"].index(name)
            steps = data.get("settings", {}).get("optimize_steps")
            effort = f"encoder: {steps} rate-distortion optimisation steps; " if steps else ""
            version = data.get("settings", {}).get("format_version", 2)  # runs before 0.3 did not record it
            if version >= 4:
                effort += "decoder adaptation where worth its bytes; "
            lines += ["", f"## Measured on Kodak (24 images; whole .vqc files, header included; {order} order; "
                      f"format version {version}; {effort}1 CPU thread on a shared 2-core machine)", ""]
            for key, label in (("bpp", "bpp"), ("psnr-rgb", "PSNR (dB)"), ("ms-ssim-rgb", "MS-SSIM"),
                               ("encoding_time", "encode (s/image)"), ("decoding_time", "decode (s/image)")):
                if key in data["results"]:
                    lines.append(f"- {label}: {data['results'][key][i]:.4f}")
    lines += exact_coding_lines(name)
    usage_file = ROOT / "benchmarks" / "results" / "codebook_usage.json"
    if usage_file.exists():
        levels = json.loads(usage_file.read_text())["models"].get(name, [])
        lines += ["", "## Codebook usage on Kodak (all 24 images; benchmarks/codebook_usage.py)", ""]
        lines += [f"- level {i} ({'bottom' if i == 0 else 'top'}): {u['in_use']:.1%} of {u['codebook_size']} codes, "
                  f"perplexity {u['perplexity']:.0f}" for i, u in enumerate(levels)]
        low = [i for i, u in enumerate(levels) if u["in_use"] < 0.9]
        if low:
            lines.append(f"- Below the 90% bar on level(s) {', '.join(map(str, low))}: those codes are learnt "
                         "but rarely chosen on photos; longer training on large crops is the known remedy.")
    return lines


def exact_coding_lines(name: str) -> list[str]:
    """What format version 3's exact prior changed against the measurements above (exact_coding.py)."""
    result = ROOT / "benchmarks" / "results" / "exact_coding.json"
    rows = [row for order in json.loads(result.read_text()).values() for row in order["rows"]
            if row["model"] == name] if result.exists() else []
    if not rows:
        return []
    lines = ["", "## Format version 3: the exact prior (benchmarks/exact_coding.py, 1 CPU thread)", "",
             "Version 3 codes the same symbols as version 2 with the exact prior (`vqcodec/exact.py`) "
             "instead of the float32 one, so files decode on any machine; the pictures are the same and "
             "only the coded bytes and the coding time move. The Kodak sections above come from whichever "
             "version the benchmark last ran in (named in their titles) and from different days of a shared "
             "machine: compare their times only within a section.", ""]
    for row in rows:
        lines.append(f"- {row['order']} order, first {row['images']} Kodak images: {row['float_bytes']} -> "
                     f"{row['exact_bytes']} bytes ({row['size_change']:+.4%}); the prior's coding passes "
                     f"{row['float_s'] / row['images']:.2f} -> {row['exact_s'] / row['images']:.2f} s per image "
                     f"(x{row['time_ratio']:.2f}; decoding walks the same passes)")
    return lines


def rewrite_shipped_sections(name: str, results_dir: Path) -> None:
    """Rewrite the card's sections that describe the shipped file and its results (not its training)."""
    card_file = MODELS / f"{name}.md"
    text = card_file.read_text()
    head, training = text.split("\n## Architecture\n")[0], text.split("\n## Training\n")[1]
    training = training.split("\n## Measured on Kodak")[0].rstrip("\n")
    lines = [head, "## Architecture", *architecture_lines(name), "", "## Training", training]
    card_file.write_text("\n".join([*lines, *measured_lines(name, results_dir)]) + "\n")


# Held-out training crops (the 5 % split of the training set, seed 0: 65 crops of 256 px), nearest
# codes, 2026-12-03: why the resampled members run vqc-4's networks (see resampled_card).
RESAMPLED_EVIDENCE = (
    "On held-out training crops (the 5 % validation split, 65 crops of 256 px; nearest codes, "
    "Lanczos both ways) `vqc-4` at x1.25 / x1.5 coded 0.680 / 0.951 bpp at 29.05 / 30.41 dB, and `vqc-3` "
    "at x1.5 / x1.75 0.719 / 0.950 bpp at 29.27 / 30.34 dB: one curve within 0.1 dB, so the family "
    "scales the model that needs fewer pixels for a rate. Pillow JPEG on the same crops: 27.7 dB at "
    "0.68 bpp, 29.4 dB at 0.95 bpp; WebP 29.9 and 31.8 dB.")


def resampled_card(name: str, results_dir: Path | None) -> str:
    """The whole card of a resampled member: its trained model, its scale, its own measurements."""
    base, scale = RESAMPLED[name]
    lines = [
        f"# {name}: `{base}`'s networks coding the image resampled x{scale:g} (Lanczos), no weights of its own",
        "",
        "## Architecture",
        f"- The image is resampled by {scale:g} in each direction (Lanczos, in float32: `vqcodec/resample.py`), "
        f"coded by `{base}` (its weights file, `{BUNDLED[base]}`, so files record its digest), and the "
        f"decoder's output is resampled back to the original size: about {scale * scale:.2f} times "
        f"`{base}`'s symbols per image, for more rate and more detail.",
        *architecture_lines(name),
        "",
        "## Training",
        f"- None of its own: `{base}`'s networks, trained on `shared/data/train` only, on CPU (its card has "
        f"the data, the steps and the hardware). `vqcodec train --config {base}` and the stages in its card "
        f"rebuild them; the scale belongs to the name (`vqcodec.models.RESAMPLED`).",
        f"- Why a resampled member: no model trained for rates above `{base}`'s exists yet (a larger "
        "autoencoder needs a GPU budget this project has not had). " + RESAMPLED_EVIDENCE,
    ]
    raster = results_dir / "vqcodec-raster.json" if results_dir else None
    if raster and raster.exists() and name not in json.loads(raster.read_text()).get("points", []):
        lines.append(f"- Not yet measured in the raster order on Kodak (the default is the fast order): "
                     f"`benchmarks/rd_kodak.py --codec vqcodec-raster -m {name}` adds it (hours on one CPU thread).")
    return "\n".join([*lines, *measured_lines(name, results_dir)]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "kodak")
    parser.add_argument("--cards-only", action="store_true", help="rewrite the cards, keep the weights")
    parser.add_argument("--measured-only", action="store_true",
                        help="rewrite only every card's measured sections (after re-running the benchmarks)")
    parser.add_argument("--keep-history", action="store_true",
                        help="runs hold only a decoder stage: keep each card's training history, add the stage")
    parser.add_argument("--requantize", action="store_true",
                        help="store every shipped model again as packaging stores it now (no runs needed); "
                             "the cards' Architecture sections follow")
    parser.add_argument("--int8-vqvae", action="store_true",
                        help="store the VQ-VAEs in 8 bits too (~4 MB less for the family; "
                             "benchmarks/weight_storage.py measures the cost); re-measure after")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.requantize:
        for name in BUNDLED:
            target = package(name, MODELS / BUNDLED[name], MODELS / BUNDLED[name], args.int8_vqvae)
            print(f"{name}: {target} ({target.stat().st_size / 1e6:.2f} MB)")
    if args.measured_only or args.requantize:
        for name in BUNDLED:
            rewrite_shipped_sections(name, args.results)
        for name in RESAMPLED:
            (MODELS / f"{name}.md").write_text(resampled_card(name, args.results))
        return
    for name in BUNDLED:
        run = args.runs / name
        files = final_files(run)
        if files is None:
            print(f"{name}: no trained model under {run}, skipped")
            continue
        if not args.cards_only:
            target = package(name, *files, int8_vqvae=args.int8_vqvae)
            print(f"{name}: {target} ({target.stat().st_size / 1e6:.2f} MB) from {', '.join(map(str, set(files)))}")
        write = card_with_history if args.keep_history else card
        (MODELS / f"{name}.md").write_text(write(name, run, args.results))


if __name__ == "__main__":
    main()
