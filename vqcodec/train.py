"""Training: the VQ-VAE (`train_vqvae`), then the prior on its symbols (`train_prior`).

Beside the flow. Each function reads top to bottom in nanoGPT order: setup, data,
model, optimizer, resume, loop, save. The cadence (logging, validation,
checkpoints, the time limit) lives in `runtime.run_loop`.

Single process:  train_vqvae(TrainConfig(data="train/", out="runs/vq"))
Several GPUs:    torchrun --nproc_per_node 4 -m vqcodec.cli train ...
                 (RANK / LOCAL_RANK / WORLD_SIZE are read from the environment)
Chunked runs:    max_minutes=9, resume=True: each call continues from out/state.pt.

Outputs in `out`:
    vqvae.safetensors / model.safetensors   weights + configs (checkpoint.save_model)
    vqvae_config.json / prior_config.json   the model config as JSON
    train_config.json / prior_train_config.json / decoder_train_config.json
    source_vqvae_config.json                the model a decoder stage started from
    state.pt / prior_state.pt               resumable training state
    log.jsonl / prior_log.jsonl             one JSON object per log / validation event
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vqcodec import rdo, resample, symbol_sets
from vqcodec.checkpoint import load_model, save_model
from vqcodec.data import ImageFolder, train_val_datasets
from vqcodec.metrics import MS_SSIM_MIN_SIDE
from vqcodec.prior import ORDERS, PriorConfig, SymbolPrior
from vqcodec.runtime import (LoopSpec, MetricsLog, Runtime, autocast, load_training_state, make_scheduler,
                             optimizer_step, place_model, prepare_out, run_loop, save_training_state,
                             seed_everything, setup_runtime, teardown_runtime, to_device, train_batches,
                             val_loader, wrap_model)
from vqcodec.vqvae import GROWABLE_BLOCKS, VQVAE2, VQVAE2Config


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What every training run has: data, output folder, schedule, cadence, device. Keyword-only."""

    data: str                           # folder of training images
    out: str                            # output folder (created)
    val_data: str | None = None         # held-out folder; None: hold out val_fraction of data
    val_fraction: float = 0.05
    split_seed: int = 0                 # draws the held-out files; apart from seed so every run holds out the same
    steps: int = 100_000                # optimizer steps in total
    batch_size: int = 16                # per process
    crop: int = 256
    lr: float = 3e-4
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1           # cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0              # max global grad norm; 0 disables
    num_workers: int = 2
    device: str = "auto"                # "auto" | "cpu" | "cuda"
    amp: bool = True                    # bf16 autocast: CUDA, and CPUs with bf16 instructions
    compile: bool = False               # torch.compile
    log_every: int = 10
    val_every: int = 1000
    ckpt_every: int = 1000
    max_minutes: float | None = None    # stop cleanly (with a checkpoint) after this long
    seed: int = 0
    resume: bool = False                # continue from the state in out when it exists

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "crop", "log_every", "val_every", "ckpt_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1 and warmup_steps >= 0")
        if self.max_minutes is not None and self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0, got {self.max_minutes}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunSettings):
    """One VQ-VAE training run."""

    vqvae: VQVAE2Config = field(default_factory=VQVAE2Config)
    msssim_weight: float = 0.0          # 0: MSE only; MS-SSIM needs crop >= 161 (else SSIM)
    top_only: float = 0.0               # share of samples decoded from the top level alone (keeps it alive)
    top_only_weight: float = 0.25       # their weight in the image loss, so the full decode still leads
    channels_last: bool = True          # NHWC memory: faster convolutions on CUDA and CPU

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.msssim_weight < 0:
            raise ValueError(f"msssim_weight must be >= 0, got {self.msssim_weight}")
        if not 0 <= self.top_only < 1 or self.top_only_weight < 0:
            raise ValueError(f"need 0 <= top_only < 1 and top_only_weight >= 0, got {self.top_only}, "
                             f"{self.top_only_weight}")


@dataclass(frozen=True, kw_only=True)
class PriorTrainConfig(RunSettings):
    """One prior training run on the symbols of a trained, frozen VQ-VAE.

    prior: a PriorConfig; or a mapping of PriorConfig fields (codebook_size and
    upsample are filled in from the VQ-VAE when absent); or None for defaults.
    """

    vqvae: str                          # a file written by train_vqvae (or any model file)
    prior: PriorConfig | Mapping[str, Any] | None = None
    init_prior: str | None = None       # start from this model file's prior (fine-tuning) unless resuming
    steps: int = 50_000
    # Decode orders whose networks train (the other order's stay as they are): each order has its
    # own networks, so fine-tuning only the one a model is used with gives it all the compute.
    orders: tuple[str, ...] = ORDERS
    # Coding scales the symbols come from, one per step in turn (resample.py), for a model whose
    # resampled members (vqc-5/6 run vqc-4 at x1.25/x1.5) should weigh in; validation reports each.
    # Measured on vqc-4's fast order: 595 CPU steps gained only 0.3 % at x1.25/x1.5, so not shipped.
    scales: tuple[float, ...] = (1.0,)
    # "nearest": nearest codes of fresh random crops. "rdo": the symbols the default encoder writes,
    # optimised with the starting prior (init_prior) for the one trained order, on rdo_images training
    # images once (symbol_sets.py; the set is kept in out/ and resumes), then random crops of them.
    symbols: str = "nearest"
    rdo_images: int = 600
    rdo_steps: int = rdo.DEFAULT_STEPS

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "orders", tuple(self.orders))  # a list from JSON becomes a tuple
        if not self.orders or len(set(self.orders)) != len(self.orders) or not set(self.orders) <= set(ORDERS):
            raise ValueError(f"orders must be distinct values among {ORDERS}, got {self.orders}")
        object.__setattr__(self, "scales", tuple(resample.check_scale(s) for s in self.scales))
        if not self.scales or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct numbers in [1, 4], got {self.scales}")
        if self.symbols not in ("nearest", "rdo"):
            raise ValueError(f"symbols must be 'nearest' or 'rdo', got {self.symbols!r}")
        if self.symbols == "rdo" and (self.init_prior is None or len(self.orders) != 1):
            raise ValueError("symbols 'rdo' needs init_prior (the prior the encoder optimises with) and one "
                             "trained order (the order whose code lengths count)")
        if self.rdo_images < 1 or self.rdo_steps < 1:
            raise ValueError(f"rdo_images and rdo_steps must be >= 1, got {self.rdo_images}, {self.rdo_steps}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["prior"] = dict(self.prior) if isinstance(self.prior, Mapping) else d["prior"]
        return d


@dataclass(frozen=True, kw_only=True)
class DecoderTrainConfig(RunSettings):
    """Decoder fine-tuning of a trained model: encoder, codebooks and prior stay frozen.

    The symbols of every image, and so the bitstreams and their rate, stay exactly as they were;
    only the reconstruction from them improves. refine_blocks / tail_blocks first grow the decoder
    to that many identity-initialised residual blocks in its trunk / before its last layer
    (VQVAE2Config.refine_blocks, .tail_blocks).
    """

    model: str                          # a model file (VQ-VAE, usually with its prior)
    refine_blocks: int | None = None    # None: keep the model's own count; else at least that count
    tail_blocks: int | None = None      # the same for the blocks before the decoder's last layer
    steps: int = 10_000
    batch_size: int = 8
    lr: float = 2e-4
    warmup_steps: int = 100
    channels_last: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in GROWABLE_BLOCKS:
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def train_config_from_dict(d: Mapping[str, Any]) -> TrainConfig:
    """TrainConfig from plain values (JSON, a recipe, CLI options); "vqvae" may be a dict.

    Raises:
        ValueError: unknown keys or invalid values.
    """
    fields = dict(d)
    if isinstance(fields.get("vqvae"), Mapping):
        fields["vqvae"] = VQVAE2Config.from_dict(dict(fields["vqvae"]))
    return _build(TrainConfig, fields)


def prior_train_config_from_dict(d: Mapping[str, Any]) -> PriorTrainConfig:
    """PriorTrainConfig from plain values; "prior" stays a mapping, completed from the VQ-VAE when training."""
    return _build(PriorTrainConfig, dict(d))


def decoder_train_config_from_dict(d: Mapping[str, Any]) -> DecoderTrainConfig:
    """DecoderTrainConfig from plain values (JSON, a recipe, CLI options)."""
    return _build(DecoderTrainConfig, dict(d))


def _build(cls: type, fields: dict[str, Any]) -> Any:
    unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    try:
        return cls(**fields)
    except TypeError as err:  # a required field is missing
        raise ValueError(f"{cls.__name__}: {err}") from None


# ----------------------------------------------------------------------------- VQ-VAE


def symbols_digest(vqvae: VQVAE2) -> str:
    """SHA-256 of the weights that decide the symbols (encoder, codebooks), not the decoder side's.

    A prior or decoder run records it so that resuming on another VQ-VAE's symbols is refused.
    """
    decoder_side = {id(p) for module in vqvae.decoder_modules() for p in module.parameters()}
    return _sha256([(name, tensor) for name, tensor in sorted(vqvae.state_dict(keep_vars=True).items())
                    if id(tensor) not in decoder_side])


def weights_digest(*modules: nn.Module) -> str:
    """SHA-256 of every weight and buffer of `modules`, in order."""
    return _sha256([item for module in modules for item in sorted(module.state_dict().items())])


def _sha256(named: list[tuple[str, Tensor]]) -> str:
    """SHA-256 of (name, tensor) pairs in the order given, values as float32."""
    sha = hashlib.sha256()
    for name, tensor in named:
        sha.update(name.encode())
        sha.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def train_vqvae(cfg: TrainConfig) -> Path:
    """Train a VQ-VAE-2; returns out/vqvae.safetensors (also written on a time stop).

    Loss: MSE + msssim_weight * (1 - MS-SSIM) + the quantizers' losses. With top_only > 0 that share
    of the samples is decoded from the top level alone and weighs top_only_weight in the MSE.
    """
    return _in_runtime(cfg, _train_vqvae)


def _train_vqvae(cfg: TrainConfig, rt: Runtime) -> Path:
    out = prepare_out(Path(cfg.out), rt, {"train_config.json": cfg.to_dict(),
                                           "vqvae_config.json": cfg.vqvae.to_dict()},
                      state_file="state.pt", resume=cfg.resume, fixed=["vqvae_config.json"])
    seed_everything(cfg.seed + rt.rank)
    train_set, val_set = train_val_datasets(cfg.data, cfg.val_data, cfg.crop,
                                            val_fraction=cfg.val_fraction, seed=cfg.seed,
                                            split_seed=cfg.split_seed)
    model = place_model(VQVAE2(cfg.vqvae), rt, channels_last=cfg.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    state_path, step = out / "state.pt", 0
    if cfg.resume and state_path.exists():
        step = load_training_state(state_path, rt, models={"vqvae": model}, optimizer=optimizer, scheduler=scheduler)
    net = wrap_model(model, rt, compile_model=cfg.compile)
    batches = train_batches(train_set, cfg.batch_size, rt, seed=cfg.seed, start_step=step,
                            num_workers=cfg.num_workers)
    structural = structural_similarity(cfg.crop) if cfg.msssim_weight > 0 else None

    def train_step() -> dict[str, Tensor]:
        x = to_device(next(batches), rt, cfg.channels_last)  # (B, 3, crop, crop)
        hide = torch.rand(x.shape[0], device=x.device) < cfg.top_only if cfg.top_only > 0 else None
        with autocast(rt, cfg.amp):
            result = net(x, hide) if hide is not None else net(x)
        x_hat = result.x_hat.float()
        mse, image_loss = _image_losses(x_hat, x, hide, cfg.top_only_weight)
        loss = image_loss + result.vq_loss
        metrics = {"mse": mse.detach(), "vq_loss": result.vq_loss.detach()}
        if structural is not None:
            similarity = structural(x_hat, x)
            loss = loss + cfg.msssim_weight * (1.0 - similarity)
            metrics["similarity"] = similarity.detach()
        optimizer_step(loss, model, optimizer, scheduler, cfg.grad_clip)
        return {"loss": loss.detach(), **metrics}

    def summarize(mean: dict[str, float]) -> dict[str, Any]:
        usage = [q.usage() for q in model.quantizers]  # rank 0's view; EMA state is synced anyway
        return {**mean, "psnr": _psnr(mean["mse"]), "lr": scheduler.get_last_lr()[0],
                "perplexity": [u["perplexity"] for u in usage], "in_use": [u["in_use"] for u in usage]}

    def checkpoint(at: int) -> None:
        save_training_state(state_path, rt, step=at, models={"vqvae": model}, optimizer=optimizer,
                            scheduler=scheduler)
        if rt.is_main:
            save_model(out / "vqvae.safetensors", model, None, metadata=_run_metadata("vqvae", at, cfg.steps))

    validate = _validator(val_set, cfg, rt, lambda loader: evaluate_vqvae(model, loader, rt))
    spec = LoopSpec(cfg.steps, cfg.log_every, cfg.val_every, cfg.ckpt_every, cfg.max_minutes,
                    cfg.batch_size * rt.world_size, show=("loss", "psnr", "perplexity", "in_use"))
    run_loop(rt, spec, step, train_step=train_step, summarize=summarize, validate=validate,
             checkpoint=checkpoint, log=MetricsLog(out / "log.jsonl", rt.is_main))
    return out / "vqvae.safetensors"


def _image_losses(x_hat: Tensor, x: Tensor, hide: Tensor | None, hide_weight: float) -> tuple[Tensor, Tensor]:
    """(MSE of the fully decoded samples, the weighted MSE to train on); top-only samples weigh hide_weight."""
    if hide is None:
        mse = F.mse_loss(x_hat, x)
        return mse, mse
    per_sample = (x_hat - x).square().mean(dim=(1, 2, 3))
    weights = torch.where(hide, hide_weight, 1.0)
    full = ~hide
    mse = per_sample[full].mean() if bool(full.any()) else per_sample.new_zeros(())
    return mse, (per_sample * weights).sum() / weights.sum()


def structural_similarity(crop: int) -> Callable[[Tensor, Tensor], Tensor]:
    """MS-SSIM (data_range 1) for crops of >= 161 px; SSIM below, where MS-SSIM cannot run.

    Returns f(x_hat, x) -> () tensor, both (B, 3, crop, crop) float32.
    """
    from pytorch_msssim import ms_ssim, ssim

    if crop >= MS_SSIM_MIN_SIDE:
        return lambda x_hat, x: ms_ssim(x_hat, x, data_range=1.0)
    warnings.warn(f"MS-SSIM needs crops of >= {MS_SSIM_MIN_SIDE} px; crop {crop} trains with SSIM instead",
                  stacklevel=2)
    return lambda x_hat, x: ssim(x_hat, x, data_range=1.0, win_size=min(11, crop - (1 - crop % 2)))


@torch.no_grad()
def evaluate_vqvae(model: VQVAE2, loader: DataLoader, rt: Runtime) -> dict[str, float]:
    """Mean PSNR (dB) over the validation images, on 8-bit rounded pixels as metrics.psnr measures."""
    was_training = model.training
    model.eval()
    psnrs: list[Tensor] = []
    for x in loader:
        x = x.to(rt.device)  # (B, 3, crop, crop)
        x_hat = model(x).x_hat.clamp(0.0, 1.0)
        err = ((x_hat * 255).round() - (x * 255).round()).pow(2).flatten(1).mean(1)  # (B,)
        psnrs.append(10.0 * torch.log10(255.0**2 / err.clamp(min=1e-10)))
    model.train(was_training)
    return {"val_psnr": float(torch.cat(psnrs).mean())}


# ----------------------------------------------------------------------------- prior


class _PriorLoss(nn.Module):
    """Wraps the prior so that DDP sees a forward: symbols -> nats/symbol per trained order."""

    def __init__(self, prior: SymbolPrior, orders: tuple[str, ...]) -> None:
        super().__init__()
        self.prior = prior
        self.orders = orders

    def forward(self, symbols: list[Tensor]) -> Tensor:
        return torch.stack([self.prior.loss(symbols, order) for order in self.orders])


def train_prior(cfg: PriorTrainConfig) -> Path:
    """Train the SymbolPrior (cfg.orders, losses summed) on a frozen VQ-VAE's symbols.

    Symbols come on the fly from random crops (fresh augmentation every epoch),
    encoded in float32 exactly as compression encodes them. Returns
    out/model.safetensors (VQ-VAE + prior; also written on a time stop).
    """
    return _in_runtime(cfg, _train_prior)


def _train_prior(cfg: PriorTrainConfig, rt: Runtime) -> Path:
    vqvae = load_model(cfg.vqvae, device=rt.device)[0].requires_grad_(False)  # frozen, eval
    prior_cfg = resolve_prior_config(vqvae.config, cfg.prior)
    out = prepare_out(Path(cfg.out), rt, {"prior_train_config.json": cfg.to_dict(),
                                           "prior_config.json": prior_cfg.to_dict(),
                                           "symbols_source.json": {"sha256": symbols_digest(vqvae)}},
                      state_file="prior_state.pt", resume=cfg.resume,
                      fixed=["prior_config.json", "symbols_source.json"])
    seed_everything(cfg.seed + rt.rank)
    train_set, val_set = train_val_datasets(cfg.data, cfg.val_data, cfg.crop,
                                            val_fraction=cfg.val_fraction, seed=cfg.seed,
                                            split_seed=cfg.split_seed)
    prior = place_model(_initial_prior(prior_cfg, cfg.init_prior, cfg.orders), rt)
    symbol_set = _rdo_symbol_set(cfg, vqvae, prior, train_set.files, out, rt) if cfg.symbols == "rdo" else None
    for order in ORDERS:  # an untrained order's networks stay frozen (and out of DDP's gradient sync)
        prior.networks(order).requires_grad_(order in cfg.orders)
    optimizer = torch.optim.Adam([p for p in prior.parameters() if p.requires_grad], lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    state_path, step = out / "prior_state.pt", 0
    if cfg.resume and state_path.exists():
        step = load_training_state(state_path, rt, models={"prior": prior}, optimizer=optimizer, scheduler=scheduler)
    net = wrap_model(_PriorLoss(prior, cfg.orders), rt, compile_model=cfg.compile)
    batches = train_batches(train_set, cfg.batch_size, rt, seed=cfg.seed, start_step=step,
                            num_workers=cfg.num_workers)

    def train_step() -> dict[str, Tensor]:
        # The schedule counts every step taken and is restored on resume, so the cycle of scales is too.
        if symbol_set is not None:
            symbols = _symbol_set_batch(symbol_set, cfg, vqvae, rt, scheduler.last_epoch)
        else:
            scale = cfg.scales[scheduler.last_epoch % len(cfg.scales)]
            x = resample.to_coded_size(next(batches).to(rt.device, non_blocking=True), scale)
            symbols = vqvae.encode(x)  # per level (B, h_l, w_l)
        with autocast(rt, cfg.amp):
            nats = net(symbols).float()  # one per trained order
        loss = nats.sum()
        optimizer_step(loss, prior, optimizer, scheduler, cfg.grad_clip)
        return {"loss": loss.detach(), **{f"nats_{o}": nats[i].detach() for i, o in enumerate(cfg.orders)}}

    def summarize(mean: dict[str, float]) -> dict[str, Any]:
        bits = {f"bits_per_symbol_{o}": mean[f"nats_{o}"] / math.log(2) for o in cfg.orders}
        return {**mean, **bits, "lr": scheduler.get_last_lr()[0]}

    def checkpoint(at: int) -> None:
        save_training_state(state_path, rt, step=at, models={"prior": prior}, optimizer=optimizer,
                            scheduler=scheduler)
        if rt.is_main:
            save_model(out / "model.safetensors", vqvae, prior, metadata=_run_metadata("prior", at, cfg.steps))

    validate = _validator(val_set, cfg, rt, lambda loader: evaluate_prior(vqvae, prior, loader, rt, cfg.scales))
    spec = LoopSpec(cfg.steps, cfg.log_every, cfg.val_every, cfg.ckpt_every, cfg.max_minutes,
                    cfg.batch_size * rt.world_size, show=tuple(f"bits_per_symbol_{o}" for o in cfg.orders),
                    validate_start=cfg.init_prior is not None)
    run_loop(rt, spec, step, train_step=train_step, summarize=summarize, validate=validate,
             checkpoint=checkpoint, log=MetricsLog(out / "prior_log.jsonl", rt.is_main))
    return out / "model.safetensors"


def _rdo_symbol_set(cfg: PriorTrainConfig, vqvae: VQVAE2, prior: SymbolPrior, files: list[Path], out: Path,
                    rt: Runtime) -> list[list[Tensor]]:
    """The optimised symbols of cfg.rdo_images training images (a seeded choice), built by the main rank.

    Built before any resumed state is loaded, so the symbols always come from the starting prior.
    """
    chosen = sorted(files[i] for i in torch.randperm(len(files), generator=torch.Generator().manual_seed(cfg.seed))
                    [:cfg.rdo_images].tolist())
    path = out / "rdo_symbols.pt"
    coder = copy.deepcopy(prior).cpu().eval()  # code lengths are computed on the CPU (rdo.CodeLengths)
    source = weights_digest(vqvae, coder)

    def build(progress: Any = None) -> list[list[Tensor]]:
        return symbol_sets.build(path, vqvae, coder, chosen, cfg.orders[0], cfg.rdo_steps, cfg.scales,
                                 source=source, progress=progress)

    maps = None
    if rt.is_main:
        bar = tqdm(total=len(chosen), desc="optimising symbols", dynamic_ncols=True)
        maps = build(lambda done, total: bar.update(done - bar.n))
        bar.close()
    if rt.distributed:
        torch.distributed.barrier()
    return maps if maps is not None else build()  # the other ranks load the finished set


def _symbol_set_batch(symbol_set: list[list[Tensor]], cfg: PriorTrainConfig, vqvae: VQVAE2, rt: Runtime,
                      step: int) -> list[Tensor]:
    """A batch of random crops of the symbol set; the draw depends on (seed, step, rank) only, so
    resuming repeats it."""
    generator = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 1024 + rt.rank)
    side = cfg.crop // vqvae.config.downsample[0]
    crops = symbol_sets.random_crops(symbol_set, side, vqvae.level_ratios(), cfg.batch_size, generator)
    return [c.to(rt.device) for c in crops]


def _initial_prior(cfg: PriorConfig, init_from: str | None, orders: tuple[str, ...]) -> SymbolPrior:
    """A fresh prior, or one started from the prior of model file `init_from` (see `grown_prior`)."""
    if init_from is None:
        return SymbolPrior(cfg)
    found = load_model(init_from)[1]
    if found is None:
        raise ValueError(f"init_prior: {init_from} holds no prior")
    try:
        return grown_prior(found, cfg, orders)
    except ValueError as err:
        raise ValueError(f"init_prior: {init_from}: {err}") from None


def grown_prior(source: SymbolPrior, cfg: PriorConfig, orders: tuple[str, ...]) -> SymbolPrior:
    """A prior with config `cfg` started from `source`.

    With the same config it is a copy. Otherwise the fast order's networks may differ in depth
    (`fast_layers`), group side (`fast_groups`) and width (`fast_channels`, not narrower) when that
    order is among the trained `orders`: they start from the source's
    (`GroupedContextModel.warm_start`). Everything else must match.

    Raises:
        ValueError: the configs differ in anything else.
    """
    prior = SymbolPrior(cfg)
    grown_fields = {"fast_layers", "fast_groups", "fast_channels"} if "fast" in orders else set()
    mine, theirs = cfg.to_dict(), source.config.to_dict()
    mine["fast_channels"], theirs["fast_channels"] = cfg.fast_width, source.config.fast_width  # 0 = channels
    differ = sorted(k for k in mine if mine[k] != theirs.get(k))
    if set(differ) - grown_fields:
        raise ValueError(f"prior config differs in {differ} (has {theirs}, this run needs {mine}); only "
                         f"fast_layers, fast_groups and fast_channels may change, and only when the fast "
                         f"order trains")
    prior.raster.load_state_dict(source.raster.state_dict())
    for net, trained in zip(prior.fast, source.fast):
        net.warm_start(trained)
    return prior


def resolve_prior_config(vq: VQVAE2Config, given: PriorConfig | Mapping[str, Any] | None) -> PriorConfig:
    """The prior's config for a VQ-VAE: codebook sizes and grid ratios always come from the VQ-VAE.

    Raises:
        ValueError: a given config disagrees with the VQ-VAE.
    """
    derived = {"codebook_size": tuple(vq.codebook_size), "upsample": tuple(vq.downsample[1:])}
    if given is None:
        return PriorConfig.from_dict(derived)
    fields = given.to_dict() if isinstance(given, PriorConfig) else {**derived, **dict(given)}
    cfg = PriorConfig.from_dict(fields)
    if tuple(cfg.codebook_size) != derived["codebook_size"] or tuple(cfg.upsample) != derived["upsample"]:
        raise ValueError(f"prior config (codebook_size={cfg.codebook_size}, upsample={cfg.upsample}) does not "
                         f"match the VQ-VAE (codebook_size={vq.codebook_size}, downsample={vq.downsample})")
    return cfg


@torch.no_grad()
def evaluate_prior(vqvae: VQVAE2, prior: SymbolPrior, loader: DataLoader, rt: Runtime,
                   scales: tuple[float, ...] = (1.0,)) -> dict[str, Any]:
    """Per order and scale: bits per symbol per level (bottom first) and the estimated bits per pixel
    of the original image. Keys of scales other than 1 end in "_x{scale}"."""
    was_training = prior.training
    prior.eval()
    record: dict[str, Any] = {}
    for scale in scales:
        suffix = "" if scale == 1 else f"_x{scale:g}"
        for key, value in _prior_bits(vqvae, prior, loader, rt, scale).items():
            record[key + suffix] = value
    prior.train(was_training)
    return record


def _prior_bits(vqvae: VQVAE2, prior: SymbolPrior, loader: DataLoader, rt: Runtime, scale: float) -> dict[str, Any]:
    levels = vqvae.config.levels
    bits = {o: [0.0] * levels for o in ORDERS}
    symbols_per_level, pixels = [0] * levels, 0
    for x in loader:
        symbols = vqvae.encode(resample.to_coded_size(x.to(rt.device), scale))  # per level (B, h_l, w_l)
        pixels += x.shape[0] * x.shape[2] * x.shape[3]  # the original's pixels: bpp as the codec counts it
        for level, s in enumerate(symbols):
            symbols_per_level[level] += s.numel()
        for order in ORDERS:
            for level, b in enumerate(prior.bits(symbols, order)):  # (B,) bits per image
                bits[order][level] += float(b.sum())
    record: dict[str, Any] = {}
    for order in ORDERS:
        record[f"val_bits_per_symbol_{order}"] = [b / n for b, n in zip(bits[order], symbols_per_level)]
        record[f"val_bpp_{order}"] = sum(bits[order]) / pixels
    return record


# ----------------------------------------------------------------------------- decoder fine-tuning


class _Reconstruction(nn.Module):
    """Wraps the VQ-VAE so that DDP sees a forward: symbols per level -> padded x_hat (B, 3, H', W')."""

    def __init__(self, vqvae: VQVAE2) -> None:
        super().__init__()
        self.vqvae = vqvae

    def forward(self, symbols: list[Tensor]) -> Tensor:
        quantized = [q.lookup(s) for q, s in zip(self.vqvae.quantizers, symbols)]
        return self.vqvae._decode_quantized(quantized)


def train_decoder(cfg: DecoderTrainConfig) -> Path:
    """Fine-tune the decoder side of a trained model on its frozen symbols (MSE).

    Symbols come on the fly from random crops, encoded in float32 exactly as compression
    encodes them. Returns out/model.safetensors: the new VQ-VAE with the model's prior
    unchanged (also written on a time stop).
    """
    return _in_runtime(cfg, _train_decoder)


def _train_decoder(cfg: DecoderTrainConfig, rt: Runtime) -> Path:
    source, prior, _ = load_model(cfg.model)
    vqvae = grown_vqvae(source, cfg.refine_blocks, cfg.tail_blocks)
    # source_vqvae_config.json: the model the stage started from, so that a model card can say
    # whether the stage grew the decoder or only trained it further.
    out = prepare_out(Path(cfg.out), rt, {"decoder_train_config.json": cfg.to_dict(),
                                           "source_vqvae_config.json": source.config.to_dict(),
                                           "vqvae_config.json": vqvae.config.to_dict(),
                                           "symbols_source.json": {"sha256": symbols_digest(source)}},
                      state_file="decoder_state.pt", resume=cfg.resume,
                      fixed=["source_vqvae_config.json", "vqvae_config.json", "symbols_source.json"])
    seed_everything(cfg.seed + rt.rank)
    train_set, val_set = train_val_datasets(cfg.data, cfg.val_data, cfg.crop,
                                            val_fraction=cfg.val_fraction, seed=cfg.seed,
                                            split_seed=cfg.split_seed)
    vqvae = place_model(vqvae, rt, channels_last=cfg.channels_last).eval()  # eval: no codebook updates
    trained = [p for module in vqvae.decoder_modules() for p in module.parameters()]
    vqvae.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(trained, lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    state_path, step = out / "decoder_state.pt", 0
    if cfg.resume and state_path.exists():
        step = load_training_state(state_path, rt, models={"vqvae": vqvae}, optimizer=optimizer,
                                   scheduler=scheduler)
    net = wrap_model(_Reconstruction(vqvae), rt, compile_model=cfg.compile)
    batches = train_batches(train_set, cfg.batch_size, rt, seed=cfg.seed, start_step=step,
                            num_workers=cfg.num_workers)

    def train_step() -> dict[str, Tensor]:
        x = to_device(next(batches), rt, cfg.channels_last)  # (B, 3, crop, crop)
        symbols = vqvae.encode(x)  # frozen: the same symbols compression writes
        with autocast(rt, cfg.amp):
            x_hat = net(symbols).float()[:, :, : x.shape[2], : x.shape[3]]
        loss = F.mse_loss(x_hat, x)
        optimizer_step(loss, vqvae, optimizer, scheduler, cfg.grad_clip)
        return {"loss": loss.detach()}

    def summarize(mean: dict[str, float]) -> dict[str, Any]:
        return {**mean, "psnr": _psnr(mean["loss"]), "lr": scheduler.get_last_lr()[0]}

    def checkpoint(at: int) -> None:
        save_training_state(state_path, rt, step=at, models={"vqvae": vqvae}, optimizer=optimizer,
                            scheduler=scheduler)
        if rt.is_main:
            save_model(out / "model.safetensors", vqvae, prior, metadata=_run_metadata("decoder", at, cfg.steps))

    validate = _validator(val_set, cfg, rt, lambda loader: evaluate_vqvae(vqvae, loader, rt))
    spec = LoopSpec(cfg.steps, cfg.log_every, cfg.val_every, cfg.ckpt_every, cfg.max_minutes,
                    cfg.batch_size * rt.world_size, show=("loss", "psnr"), validate_start=True)
    run_loop(rt, spec, step, train_step=train_step, summarize=summarize, validate=validate,
             checkpoint=checkpoint, log=MetricsLog(out / "decoder_log.jsonl", rt.is_main))
    return out / "model.safetensors"


def grown_vqvae(source: VQVAE2, refine_blocks: int | None, tail_blocks: int | None = None) -> VQVAE2:
    """`source` with at least `refine_blocks` decoder refine blocks and `tail_blocks` tail blocks.

    New blocks start as the identity, so the grown model decodes exactly as `source` did. None keeps
    the model's own count.

    Raises:
        ValueError: a count is below the one the model already has (that would drop weights).
    """
    wanted = {"refine_blocks": refine_blocks, "tail_blocks": tail_blocks}
    changes = {name: n for name, n in wanted.items() if n is not None and n != getattr(source.config, name)}
    if not changes:
        return source
    for name, n in changes.items():
        have = getattr(source.config, name)
        if n < have:
            raise ValueError(f"{name}={n}: the model already has {have}; fewer would drop weights")
    grown = VQVAE2(dataclasses.replace(source.config, **changes))
    missing, unexpected = grown.load_state_dict(source.state_dict(), strict=False)
    new_modules = tuple(f"{module}." for module in GROWABLE_BLOCKS.values())
    if unexpected or any(not key.startswith(new_modules) for key in missing):
        raise ValueError(f"cannot grow the model: missing {missing}, unexpected {unexpected}")
    return grown


# ----------------------------------------------------------------------------- shared steps


def _in_runtime(cfg: Any, train: Callable[[Any, Runtime], Path]) -> Path:
    """Run train(cfg, rt) between runtime setup and teardown (process group, device), even on errors."""
    rt = setup_runtime(cfg.device)
    try:
        return train(cfg, rt)
    finally:
        teardown_runtime(rt)


def _validator(val_set: ImageFolder | None, cfg: RunSettings, rt: Runtime,
               evaluate: Callable[[DataLoader], dict[str, Any]]) -> Callable[[], dict[str, Any]] | None:
    """Validation on rank 0 only (the other ranks wait at their next collective); None without a set."""
    if val_set is None:
        return None
    loader = val_loader(val_set, cfg.batch_size, cfg.num_workers)
    return lambda: evaluate(loader) if rt.is_main else {}


def _psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error on [0, 1] pixels (training-time, unrounded)."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def _run_metadata(stage: str, step: int, steps: int) -> dict[str, str]:
    return {"stage": stage, "train_step": str(step), "train_steps": str(steps)}
