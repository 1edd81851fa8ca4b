"""`vqcodec train`, `train-prior` and `train-decoder`: options -> a config dict -> vqcodec.train.

Thin by design (STYLE R11): no tensors here. A run's settings are layered, later wins:

    dataclass defaults  <  --config NAME (a recipe)  <  --vqvae-config / --prior-config FILE.json
                        <  options given on the command line

Options left out do not override anything, so `--config big --steps 10` changes only the steps.

Recipes hook: `vqcodec.recipes.get(name)` (imported only when --config is used) returns a
two-stage recipe dataclass (vqvae, prior, vqvae_steps, prior_steps and shared fields such as
batch_size), or a mapping of config fields, optionally in sections "train" / "train_prior".
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vqcodec.errors import VQCodecError
from vqcodec.prior import ORDERS
from vqcodec.train import (DecoderTrainConfig, PriorTrainConfig, TrainConfig, decoder_train_config_from_dict,
                           prior_train_config_from_dict, train_config_from_dict, train_decoder, train_prior,
                           train_vqvae)

_DIR = click.Path(file_okay=False, path_type=Path)
_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_JSON_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _default(cls: type, name: str) -> Any:
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def _shared_options(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Options common to both commands; defaults None = "not given" (the layers below decide)."""
    def opt(flag: str, kind: Any, text: str) -> Callable[..., Any]:
        name = flag.lstrip("-").split("/")[0].replace("-", "_")
        typed = {} if kind is bool else {"type": kind}
        return click.option(flag, default=None, help=f"{text} [default: {_default(cls, name)}]", **typed)

    options = [
        click.option("--data", type=_EXISTING_DIR, help="Folder of training images (jpg/png/webp)."),
        click.option("--out", type=_DIR, help="Output folder (weights, state, logs)."),
        click.option("--val-data", type=_EXISTING_DIR, help="Held-out folder [default: a fraction of --data]."),
        opt("--val-fraction", float, "Fraction of --data held out when no --val-data."),
        click.option("--config", "recipe", metavar="NAME", help="Named recipe (vqcodec.recipes)."),
        opt("--steps", click.IntRange(min=1), "Optimizer steps in total."),
        opt("--batch-size", click.IntRange(min=1), "Images per step and process."),
        opt("--crop", click.IntRange(min=1), "Side of the square training crops in pixels."),
        opt("--lr", float, "Peak learning rate (Adam)."),
        opt("--warmup-steps", click.IntRange(min=0), "Linear warm-up steps."),
        opt("--min-lr-ratio", float, "Cosine schedule ends at lr x this."),
        opt("--grad-clip", float, "Max global gradient norm (0: off)."),
        opt("--num-workers", click.IntRange(min=0), "Data-loading processes."),
        opt("--device", click.Choice(["auto", "cpu", "cuda"]), "Where to train."),
        opt("--amp/--no-amp", bool, "bf16 autocast (CUDA, and CPUs with bf16 instructions)."),
        opt("--compile/--no-compile", bool, "torch.compile the model."),
        opt("--log-every", click.IntRange(min=1), "Steps between log lines."),
        opt("--val-every", click.IntRange(min=1), "Steps between validations."),
        opt("--ckpt-every", click.IntRange(min=1), "Steps between resumable checkpoints."),
        opt("--max-minutes", click.FloatRange(min=0), "Stop cleanly, with a checkpoint, after this long."),
        opt("--seed", int, "Seed of initialisation, data order and augmentation (not of the held-out split)."),
        opt("--split-seed", int, "Seed of the held-out split of --data (keep the default to hold out the files "
            "the shipped models held out)."),
        opt("--resume/--no-resume", bool, "Continue from the state in --out when there is one."),
    ]

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


@click.command("train")
@_shared_options(TrainConfig)
@click.option("--vqvae-config", type=_JSON_FILE, help="JSON file of VQVAE2Config fields.")
@click.option("--msssim-weight", type=click.FloatRange(min=0), default=None,
              help="Weight of 1 - MS-SSIM in the loss (0: MSE only; SSIM for crops < 161). "
              f"[default: {_default(TrainConfig, 'msssim_weight')}]")
@click.option("--top-only", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
              help="Share of samples decoded from the top level alone, which keeps the top level in use. "
              f"[default: {_default(TrainConfig, 'top_only')}]")
@click.option("--refine", is_flag=True,
              help="With --config: run the recipe's second stage (larger crops), resuming the run in --out.")
@click.option("--channels-last/--no-channels-last", default=None,
              help=f"channels_last memory (faster convolutions). [default: {_default(TrainConfig, 'channels_last')}]")
def train_command(recipe: str | None, vqvae_config: Path | None, refine: bool, **options: Any) -> None:
    """Train the VQ-VAE. Multi-GPU: torchrun --nproc_per_node N -m vqcodec.cli train ..."""
    fields = _recipe(recipe, "train")
    refine_stage = fields.pop("vqvae_refine", None)
    if refine:
        fields.update(_refine_fields(recipe, refine_stage))
    if vqvae_config is not None:
        fields["vqvae"] = {**dict(fields.get("vqvae") or {}), **_read_json(vqvae_config)}
    fields.update(_given(options))
    cfg = _checked(train_config_from_dict, fields)
    if refine and not (Path(cfg.out) / "state.pt").exists():
        raise click.UsageError(f"--refine continues the first stage's run, but {cfg.out} holds no state.pt: "
                               f"run `vqcodec train --config {recipe}` there first")
    _report(_run(train_vqvae, cfg))


@click.command("train-prior")
@_shared_options(PriorTrainConfig)
@click.option("--vqvae", "vqvae_path", type=click.Path(exists=True, dir_okay=False),
              help="Trained VQ-VAE weights (vqvae.safetensors from `vqcodec train`).")
@click.option("--prior-config", type=_JSON_FILE, help="JSON file of PriorConfig fields (sizes come from the VQ-VAE).")
@click.option("--init-prior", type=click.Path(exists=True, dir_okay=False),
              help="Start from this model file's prior instead of a fresh one: the same config, or, when the "
              "fast order trains, another fast_layers / fast_groups or a larger fast_channels (what fits carries "
              "over).")
@click.option("--order", "orders", type=click.Choice(ORDERS), multiple=True,
              help="Train only this decode order's networks (repeatable); the other order's stay as they are "
              "[default: both].")
@click.option("--scale", "scales", type=click.FloatRange(1, 4), multiple=True,
              help="Learn the symbols of images resampled by this factor, as a resampled member codes them "
              "(repeatable: the steps take the scales in turn; validation reports each) [default: 1].")
@click.option("--symbols", type=click.Choice(["nearest", "rdo"]), default=None,
              help="Learn nearest codes of fresh crops, or the symbols the default encoder writes (rate-distortion "
              "optimised with the --init-prior for the one --order, on --rdo-images training images once, kept in "
              "--out) [default: nearest].")
@click.option("--rdo-images", type=click.IntRange(min=1), default=None,
              help=f"Training images whose symbols --symbols rdo optimises [default: "
              f"{_default(PriorTrainConfig, 'rdo_images')}].")
@click.option("--rdo-steps", type=click.IntRange(min=1), default=None,
              help=f"Optimisation steps per image, as the default encoder takes them [default: "
              f"{_default(PriorTrainConfig, 'rdo_steps')}].")
def train_prior_command(recipe: str | None, vqvae_path: str | None, prior_config: Path | None,
                        orders: tuple[str, ...], scales: tuple[float, ...], symbols: str | None,
                        rdo_images: int | None, rdo_steps: int | None, **options: Any) -> None:
    """Train the prior (both decode orders, or --order) on a frozen VQ-VAE's symbols; writes model.safetensors."""
    fields = _recipe(recipe, "train_prior")
    if orders:
        fields["orders"] = list(dict.fromkeys(orders))
    if scales:
        fields["scales"] = list(dict.fromkeys(scales))
    if vqvae_path is not None:
        fields["vqvae"] = str(vqvae_path)
    fields.update({k: v for k, v in {"symbols": symbols, "rdo_images": rdo_images, "rdo_steps": rdo_steps}.items()
                   if v is not None})
    if prior_config is not None:
        fields["prior"] = {**dict(fields.get("prior") or {}), **_read_json(prior_config)}
    fields.update(_given(options))
    if fields.get("vqvae") is None:
        raise click.UsageError("--vqvae is required (the trained VQ-VAE whose symbols the prior learns)")
    cfg = _checked(prior_train_config_from_dict, fields)
    _report(_run(train_prior, cfg))


@click.command("train-decoder")
@_shared_options(DecoderTrainConfig)
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False),
              help="Trained model file (model.safetensors from `vqcodec train-prior`, or a bundled model's file).")
@click.option("--refine-blocks", type=click.IntRange(min=0), default=None,
              help="Grow the decoder to this many identity-initialised refine blocks first "
              "[default: the recipe's, else the model's own].")
@click.option("--tail-blocks", type=click.IntRange(min=0), default=None,
              help="Grow the decoder to this many identity-initialised residual blocks before its last layer "
              "(its finest features) first [default: the recipe's, else the model's own].")
@click.option("--channels-last/--no-channels-last", default=None,
              help=f"channels_last memory. [default: {_default(DecoderTrainConfig, 'channels_last')}]")
def train_decoder_command(recipe: str | None, model_path: str | None, **options: Any) -> None:
    """Fine-tune the decoder on the model's frozen symbols: same bitstreams, better pictures; writes model.safetensors."""
    fields = _recipe(recipe, "train_decoder")
    if model_path is not None:
        fields["model"] = str(model_path)
    fields.update(_given(options))
    if fields.get("model") is None:
        raise click.UsageError("--model is required (the trained model whose decoder to fine-tune)")
    cfg = _checked(decoder_train_config_from_dict, fields)
    _report(_run(train_decoder, cfg))


def _refine_fields(recipe: str | None, stage: dict[str, Any] | None) -> dict[str, Any]:
    """The refine stage of a recipe as config fields: its steps, crop and batch, resuming the run."""
    if recipe is None:
        raise click.UsageError("--refine needs --config NAME (the recipe whose second stage to run)")
    if not stage:
        raise click.UsageError(f"--refine: recipe {recipe!r} has no refine stage")
    return {"steps": stage["steps"], "crop": stage["crop"], "batch_size": stage["batch_size"], "resume": True}


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """Options the user gave, as config values (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if v is not None}


def _recipe(name: str | None, section: str) -> dict[str, Any]:
    """Config fields of recipe `name` for `section` ("train", "train_prior" or "train_decoder")."""
    if name is None:
        return {}
    try:
        recipes = importlib.import_module("vqcodec.recipes")
    except ImportError:
        raise click.UsageError(f"--config {name}: no named recipes are installed (vqcodec.recipes is missing); "
                               "use --vqvae-config FILE.json and options instead") from None
    try:
        found = recipes.get(name)
    except (KeyError, ValueError, VQCodecError) as err:
        raise click.UsageError(f"--config: {err}") from None
    if dataclasses.is_dataclass(found):
        fields = dataclasses.asdict(found)
        decoder_stage = fields.pop("decoder", None)  # a stage of its own, not shared fields
        if section != "train_decoder":
            return _stage_fields(fields, section)
        if not decoder_stage:
            raise click.UsageError(f"--config {name}: the recipe has no decoder stage")
        return dict(decoder_stage)
    fields = dict(found)
    return dict(fields[section]) if isinstance(fields.get(section), dict) else fields


def _stage_fields(recipe: dict[str, Any], section: str) -> dict[str, Any]:
    """A two-stage recipe (vqvae, prior, vqvae_steps, prior_steps, shared fields) -> one stage's fields."""
    own, other = ("vqvae", "prior") if section == "train" else ("prior", "vqvae")
    fields = {k: v for k, v in recipe.items() if not k.startswith(other)}
    for name in ("steps", "crop"):  # stage-specific values (vqvae_steps, prior_crop, ...) win
        if f"{own}_{name}" in fields:
            fields[name] = fields.pop(f"{own}_{name}")
    if section == "train_prior":
        for image_only in ("msssim_weight", "top_only"):  # the prior has no image loss
            fields.pop(image_only, None)
    return fields


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"{path}: not valid JSON ({err})") from None
    if not isinstance(content, dict):
        raise click.BadParameter(f"{path}: expected a JSON object of config fields")
    return content


def _checked(build: Callable[[dict[str, Any]], Any], fields: dict[str, Any]) -> Any:
    for name in ("data", "out"):
        if fields.get(name) is None:
            raise click.UsageError(f"--{name} is required (on the command line or in the recipe)")
    try:
        return build(fields)
    except (ValueError, TypeError) as err:  # TypeError: a config value of the wrong type (e.g. "channels": "64")
        raise click.UsageError(f"bad config: {err}") from None


def _run(train: Callable[[Any], Path], cfg: Any) -> Path:
    try:
        return train(cfg)
    except (VQCodecError, ValueError, OSError) as err:
        raise click.ClickException(str(err)) from None


def _report(path: Path) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line rather than one per process
        click.echo(f"wrote {path}")
